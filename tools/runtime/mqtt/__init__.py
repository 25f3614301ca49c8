"""MQTT bridge internals; the public names are re-exported by `tools.mqtt_bridge`."""
