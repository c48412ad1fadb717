import threading
import time

import numpy as np
import pytest

from engine.rt.ring import PcmRing, RingReader


def ramp(start, n, channels=2):
    """Frames whose value is their absolute sample index (+ 0.5 on the second channel)."""
    idx = np.arange(start, start + n, dtype=np.float32)[:, None]
    return np.concatenate([idx, idx + 0.5][:channels], axis=1)


def test_wrap_around_keeps_samples_at_their_absolute_index():
    ring = PcmRing(100, 2)
    reader = RingReader(ring, start=0)
    got = []
    for start in range(0, 1000, 30):
        ring.write(ramp(start, 30))
        got.append(reader.read(1000))
    data = np.concatenate(got)
    assert np.array_equal(data, ramp(0, 1020))
    assert reader.overruns == 0


def test_slow_reader_is_moved_to_the_live_point_and_counted():
    ring = PcmRing(100, 2)
    slow = RingReader(ring, start=0)
    for start in range(0, 250, 50):
        ring.write(ramp(start, 50))
    data = slow.read(10)
    assert slow.overruns == 1
    assert slow.skipped_samples == 250
    assert data.shape[0] == 0 and slow.cursor == 250  # at the live point, nothing yet
    ring.write(ramp(250, 20))
    assert np.array_equal(slow.read(100), ramp(250, 20))


def test_new_reader_starts_at_the_live_point():
    ring = PcmRing(64, 1)
    ring.write(ramp(0, 40, channels=1))
    reader = RingReader(ring)
    assert reader.cursor == 40 and reader.read(10).shape == (0, 1)


def test_a_write_during_a_readers_copy_is_detected_and_the_reader_moves_on():
    """The race itself, provoked deterministically: the writer overwrites the span a reader is
    copying, in the middle of its copy. The post-copy check must catch it; the reader is moved
    to the live point and counted, and never returns the torn frames."""
    ring = PcmRing(100, 2)
    ring.write(ramp(0, 100))
    reader = RingReader(ring, start=0)
    copy_out = ring._copy_out
    races = []

    def copy_with_a_write_in_the_middle(start, out):
        half = out.shape[0] // 2
        copy_out(start, out[:half])
        if not races:  # the first copy only: the writer laps the reader's span right now
            races.append(start)
            ring.write(ramp(100, 60))
        copy_out(start + half, out[half:])

    ring._copy_out = copy_with_a_write_in_the_middle
    frames = reader.read(40)
    assert races == [0]
    assert reader.overruns == 1 and reader.skipped_samples == 160
    assert frames.shape[0] == 0 and reader.cursor == 160  # nothing torn was handed out
    assert ring.reader_overruns == 1
    ring._copy_out = copy_out
    ring.write(ramp(160, 10))
    assert np.array_equal(reader.read(100), ramp(160, 10))


def test_a_write_beyond_the_readers_span_does_not_disturb_it():
    ring = PcmRing(100, 2)
    ring.write(ramp(0, 100))
    reader = RingReader(ring, start=60)
    copy_out = ring._copy_out

    def copy_with_a_write(start, out):
        ring.write(ramp(100, 50))  # claims 0..149 % 100: samples 0..49, behind the reader
        copy_out(start, out)

    ring._copy_out = copy_with_a_write
    assert np.array_equal(reader.read(40), ramp(60, 40))
    assert reader.overruns == 0


def test_concurrent_readers_are_overrun_but_never_see_torn_or_misplaced_frames():
    """Real threads: the writer laps the readers (a small ring, written flat out) until every
    reader has been moved to the live point several times; no reader ever hands out a frame
    that is not the one at its absolute index."""
    ring = PcmRing(4096, 2)
    errors, done = [], threading.Event()
    readers = [RingReader(ring, start=0) for _ in range(3)]

    def read_all(reader_id):
        reader = readers[reader_id]
        while not (done.is_set() and reader.available() == 0):
            frames = reader.read(777 + reader_id)
            first = reader.cursor - frames.shape[0]  # after a jump, `first` is the live point
            if frames.shape[0] and not np.array_equal(frames, ramp(first, frames.shape[0])):
                errors.append((reader_id, first))
                return

    threads = [threading.Thread(target=read_all, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    start, deadline = 0, time.monotonic() + 60
    while min(r.overruns for r in readers) < 3 and not errors:
        assert time.monotonic() < deadline, [r.overruns for r in readers]
        ring.write(ramp(start, 1000))
        start += 1000
    done.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert all(r.overruns >= 3 for r in readers)
    assert ring.reader_overruns == sum(r.overruns for r in readers)
    assert ring.written_until == start


def test_channels_stay_interleaved():
    ring = PcmRing(10, 2)
    ring.write(ramp(0, 7))
    ring.write(ramp(7, 7))
    out = np.empty((5, 2), np.float32)
    assert ring.read_into(9, out)
    assert np.array_equal(out[:, 1] - out[:, 0], np.full(5, 0.5, np.float32))


def test_the_writer_takes_back_unread_samples_and_rewrites_them_in_place():
    ring = PcmRing(100, 2)
    reader = RingReader(ring, start=0)
    ring.write(ramp(0, 90))
    assert np.array_equal(reader.read(30), ramp(0, 30))
    ring.take_back(50)  # samples 50..89 are replaced
    replacement = ramp(50, 70) + 1000.0
    ring.write(replacement)
    assert ring.written_until == 120
    got = reader.read(200)  # 30..119: the old samples up to 50, the new ones after
    assert np.array_equal(got[:20], ramp(30, 20)) and np.array_equal(got[20:], replacement)
    assert reader.overruns == 0
    # Nothing before the oldest kept sample or beyond what was written can be taken back.
    for bad in (ring.oldest_kept - 1, ring.written_until + 1):
        with pytest.raises(ValueError, match="cannot take back"):
            ring.take_back(bad)
