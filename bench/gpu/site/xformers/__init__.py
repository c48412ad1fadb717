"""Device harness stand-in for xFormers: only what audiocraft's torch attention backend touches."""
