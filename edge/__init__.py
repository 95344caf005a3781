"""tidegate edge: the gateway service, a thin shell over core (MQTT and serial intake, real files, metrics)."""
