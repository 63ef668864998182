"""Settings, storage and connections to the servers the flows use."""
