"""Developer and test tools: virtual ESP32, fleet simulator, service checks, benchmarks."""
