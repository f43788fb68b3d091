"""The inference engine: the only road from the server to the models."""
