import threading

import numpy as np

from engine.ring import PcmRing, RingReader


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


def test_concurrent_readers_never_see_torn_or_misplaced_frames():
    ring = PcmRing(4096, 2)
    total = 400_000
    errors, done = [], threading.Event()

    def read_all(reader_id):
        reader = RingReader(ring, start=0)
        while not (done.is_set() and reader.available() == 0):
            frames = reader.read(777 + reader_id)
            first = reader.cursor - frames.shape[0]  # after a jump, `first` is the live point
            if frames.shape[0] and not np.array_equal(frames, ramp(first, frames.shape[0])):
                errors.append((reader_id, first))
                return

    readers = [threading.Thread(target=read_all, args=(i,)) for i in range(3)]
    for t in readers:
        t.start()
    for start in range(0, total, 1000):
        ring.write(ramp(start, 1000))
    done.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, errors
    assert ring.written_until == total


def test_channels_stay_interleaved():
    ring = PcmRing(10, 2)
    ring.write(ramp(0, 7))
    ring.write(ramp(7, 7))
    out = np.empty((5, 2), np.float32)
    assert ring.read_into(9, out)
    assert np.array_equal(out[:, 1] - out[:, 0], np.full(5, 0.5, np.float32))
