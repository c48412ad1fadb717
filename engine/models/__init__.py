"""The MusicGen model (token LM + EnCodec codec): real checkpoints from the hub or a folder
(load), random ones of real shape for the demo, tests and benchmarks (random_musicgen)."""
