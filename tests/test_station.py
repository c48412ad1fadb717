"""The station's figures: each read from the part that owns it, counted for real."""
import threading

import numpy as np
import pytest

from engine.rt.clock import PacedClock
from engine.rt.device import DeviceOutput
from engine.rt.ring import RingReader
from engine.station.config import ModelConfig, StationConfig
from engine.station.station import Station

SR = 32000


@pytest.fixture()
def station(tiny_model):
    return Station(StationConfig(stride_seconds=1, context_seconds=1, duration_seconds=2.5,
                                seed=3), tiny_model, model_config=ModelConfig("tiny"))


def test_status_counts_program_readers_that_fell_behind(station):
    reader = RingReader(station.program_ring, start=0)
    capacity = station.program_ring.capacity_samples
    station.program_ring.write(np.zeros((capacity, 1), np.float32))
    station.program_ring.write(np.zeros((SR, 1), np.float32))  # laps the reader
    assert reader.read(100).shape[0] == 0 and reader.overruns == 1
    assert station.status()["reader_overruns"] == 1


def test_status_reports_the_clocks_underflows(station):
    clock = PacedClock(station.player)
    clock.underflows = 3
    station.clock = clock
    assert station.status()["output_underflows"] == 3


def test_the_sound_device_callback_counts_output_underflows(station):
    import sounddevice
    device = DeviceOutput.__new__(DeviceOutput)  # the callback alone: no sound card here
    device.player, device.underflows = station.player, 0
    device._callback_stop = sounddevice.CallbackStop
    out = np.zeros((480, 1), np.float32)
    device._callback(out, 480, None, sounddevice.CallbackFlags(0))
    device._callback(out, 480, None, sounddevice.CallbackFlags(4))  # paOutputUnderflow
    device._callback(out, 480, None, sounddevice.CallbackFlags(2))  # input overflow: not ours
    assert device.underflows == 1


def test_play_generates_in_the_calling_thread_and_plays_to_the_end(station):
    generated_in = set()
    next_stride = station.generator.next_stride

    def spy(*args, **kwargs):
        generated_in.add(threading.get_ident())
        return next_stride(*args, **kwargs)

    station.generator.next_stride = spy
    stop = threading.Event()
    station.play(PacedClock(station.player), stop)
    status = station.status()
    assert generated_in == {threading.get_ident()}
    assert station.finished and stop.is_set() and station.program_ring.closed
    assert status["played_seconds"] == 2.5 and status["strides"] == 3
    assert station.producer.error is None
