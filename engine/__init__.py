"""Endless MusicGen radio engine, by stage of the flow:

    models → lm (prompt → tokens) → codec (tokens → PCM) → rt (ring, player, clocks)
           → station (producer loop, metrics) → net (encoders, listeners, status) / outputs

radio.py builds one station with its clock, outputs and network side from the config records.
"""
