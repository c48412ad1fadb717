"""A failing output (encoder, recording disk) never stops the stream or the other outputs: an
encoder is started afresh, a recording that cannot be written is closed valid and reported."""
import resource
import signal
import time
import urllib.request

import numpy as np
import soundfile

from engine.net.encoders import EncoderWorker, PcmCodec
from engine.net.packets import PacketRing
from engine.rt.ring import PcmRing
from netutil import SR, RunningServer


class FlakyCodec(PcmCodec):
    """Fails once: on the 3rd block it is given (over all its instances)."""
    blocks = 0

    def encode(self, frames, start_sample):
        FlakyCodec.blocks += 1
        if FlakyCodec.blocks == 3:
            raise RuntimeError("encoder exploded")
        return super().encode(frames, start_sample)


def test_a_failing_encoder_is_started_afresh_and_its_listeners_get_audio_again(caplog):
    program = PcmRing(10 * SR, 1)
    ring = PacketRing(500)
    worker = EncoderWorker(FlakyCodec(SR, 1), program, ring, max_backoff_seconds=0.2)
    worker.want()  # someone listens
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while worker.restarts == 0 or ring.next_seq < 20:
            assert time.monotonic() < deadline, (worker.restarts, ring.next_seq)
            program.write(np.full((SR // 20, 1), 0.1, np.float32))
            time.sleep(0.02)
    finally:
        worker.stop()
        worker.join(5)
    assert worker.restarts == 1 and worker.error is None and worker.health()["state"] == "encoding"
    starts = [ring.get(seq).stream_sample for seq in range(ring.oldest_seq, ring.next_seq)]
    assert starts == sorted(starts)  # packet times only grow across the restart
    assert "encoder pcm failed (RuntimeError: encoder exploded); starting it afresh" in caplog.text


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_a_full_recording_disk_is_reported_and_the_stream_goes_on(tmp_path):
    path = tmp_path / "radio.wav"  # float WAV: 128 kB per second, so the limit is hit after ~2.3 s
    server = RunningServer("--record", str(path), "--stride", "2", "--context", "2", preexec_fn=limit_file_size)
    try:
        server.wait_for_log("record: stopped after", timeout=60)
        played = len(server.program)
        server.wait_for_program(played + 2 * SR * 2)  # 2 s more are played after the failure
        status = server.status()
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as r:
            healthy = r.status
        rc = server.terminate_and_wait()
    finally:
        server.stop()
    record = status["outputs"]["record"]
    assert record["state"] == "failed" and "MB free there" in record["error"] and "holds the first" in record["error"]
    assert healthy == 200 and rc == 0 and status["underruns"] == 0
    info = soundfile.info(str(path))  # closed valid, with what was written
    assert 0 <= info.frames - record["samples_written"] < 4096  # (and part of the block that failed)
    assert 2.0 * SR <= info.frames <= 2.4 * SR
    audio, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    played = np.frombuffer(bytes(server.program[:info.frames * 2]), dtype="<i2") / 32767
    assert np.max(np.abs(audio[:, 0] - played)) < 1e-3  # what was played, up to the failure
