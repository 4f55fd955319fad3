"""The gateway's side of the device protocol over MQTT."""
