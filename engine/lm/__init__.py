"""Prompt → tokens: the MusicGen language model in the engine's own fast decoder (hardware →
quantize → weights → cache → model → graph → sampling → generate) and the token window that
continues it stride after stride (window)."""
