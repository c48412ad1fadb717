"""One station: its configuration, the producer loop that keeps the stream ring ahead of the
playhead, the metrics record, and the station that wires them and plays (station)."""
