"""The MQTT bridge: the gaze stream and the labels out of the laptop, models back into it
(`gazeloop collect`, `announce`, `fetch`, `bench mqtt` and `run --mqtt` drive it)."""
