"""Real time: the PCM ring (one writer, many readers, absolute sample index), the player (the
playhead, fades on underrun) and the clocks that drive it (the sound device, the system clock)."""
