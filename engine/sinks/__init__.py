"""Sinks are readers of the program ring (what was played): sound device, stdout, file."""
