"""Tokens → PCM: the EnCodec decoder run stride by stride, seam-free (stitcher)."""
