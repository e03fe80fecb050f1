"""Shape models: the bundle format and the decoders."""
