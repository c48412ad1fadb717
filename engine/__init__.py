"""Endless MusicGen radio engine: generator → stitcher → ring → playback and sinks."""
