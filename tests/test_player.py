import numpy as np

from engine.rt.player import Player
from engine.rt.ring import PcmRing, RingReader

SR = 1000


def make(end_sample=None, capacity=10_000):
    stream = PcmRing(capacity, 1)
    program = PcmRing(capacity, 1)
    player = Player(stream, program, SR, end_sample=end_sample, fade_seconds=0.01, resume_seconds=0.05)
    return stream, program, player


def render_blocks(player, count, block=16):
    out = []
    for _ in range(count):
        buf = np.full((block, 1), 7.0, np.float32)  # garbage that must be overwritten
        player.render(buf)
        out.append(buf)
    return np.concatenate(out)


def test_plays_the_stream_and_publishes_exactly_what_it_played():
    stream, program, player = make()
    tap = RingReader(program, start=0)
    stream.write(np.full((200, 1), 0.5, np.float32))
    out = render_blocks(player, 5)
    assert np.all(out == 0.5)
    assert player.playhead == 80 and player.underruns == 0
    assert np.array_equal(tap.read(1000), out)


def test_underrun_fades_out_plays_silence_counts_and_fades_back_in():
    stream, program, player = make()
    stream.write(np.ones((40, 1), np.float32))
    out = render_blocks(player, 6)
    assert player.underruns == 1 and player.starved
    played = out[:, 0]
    assert np.max(np.abs(np.diff(played))) <= 1.0 / 9 + 1e-6  # a fade, never a step
    assert played[31] == 0.0 and np.all(played[32:] == 0.0)  # faded out before the ring ran dry
    assert player.playhead == 32  # stream time stands still: no music is skipped
    stream.write(np.ones((300, 1), np.float32))
    after = render_blocks(player, 8)[:, 0]
    assert not player.starved
    assert after[0] < 0.2 and np.max(np.abs(np.diff(after))) <= 1.0 / 9 + 1e-6
    assert np.all(after[16:] == 1.0)
    assert player.playhead == 32 + 128 and player.underruns == 1


def test_stops_exactly_at_the_end_sample():
    stream, program, player = make(end_sample=50)
    tap = RingReader(program, start=0)
    stream.write(np.full((50, 1), 0.25, np.float32))
    out = render_blocks(player, 6)
    assert player.finished and program.closed
    assert player.playhead == 50 and player.underruns == 0
    assert np.all(out[:50] == 0.25) and np.all(out[50:] == 0.0)
    assert tap.read(1000).shape[0] == 50
