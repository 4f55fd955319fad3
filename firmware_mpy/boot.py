# Runs first at every power-up (ESP32) and before main.py in the virtual device.
# Keep it tiny: a failing boot.py must never stop main.py from starting.
import gc
import sys

if sys.platform == "esp32":
    try:
        import esp

        esp.osdebug(None)  # vendor debug output would interleave with our console lines
    except ImportError:
        pass
gc.collect()
