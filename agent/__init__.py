"""boxtel agent: the daemon core (config, runtime, outbox, MQTT publisher, diagnostics, CLI)."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/boxtel/boxtel"  # Home Assistant's "origin" support link
