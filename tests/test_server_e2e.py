"""End-to-end: start server.py for real, as a user would."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from netutil import RunningServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def server_cmd(*args):
    return [sys.executable, os.path.join(ROOT, "server.py"), "--port", "0", *args]


def run_server(*args, timeout=180, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(server_cmd(*args), cwd=ROOT, capture_output=True, timeout=timeout, env=env)


def test_stdout_gives_exactly_the_duration_and_the_same_bytes_twice():
    args = ("--model", "tiny", "--no-play", "--stdout", "--duration", "12", "--seed", "1")
    first = run_server(*args)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    second = run_server(*args)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    pcm = np.frombuffer(first.stdout, dtype="<i2")
    assert pcm.size == 12 * SR
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # non-silent
    assert np.mean(np.abs(pcm) < 3) < 0.05  # no stretch of silence inside
    assert first.stdout == second.stdout
    # Levelled to --loudness (-16 LUFS by default) with the true-peak ceiling.
    import pyloudnorm
    tail = pcm[-3 * SR:].astype(np.float64) / 32768
    assert abs(pyloudnorm.Meter(SR).integrated_loudness(tail) + 16.0) <= 1.0
    assert np.abs(pcm).max() / 32768 <= 10 ** (-1 / 20) + 1e-4
    log = first.stderr.decode()
    assert "stride 0:" in log and "real-time factor" in log and "buffered ahead" in log
    assert "pre-fill" in log and "noise, not music" in log


def test_other_seed_other_audio():
    a = run_server("--model", "tiny", "--no-play", "--stdout", "--duration", "2", "--seed", "1",
                   "--stride", "2")
    b = run_server("--model", "tiny", "--no-play", "--stdout", "--duration", "2", "--seed", "2",
                   "--stride", "2")
    assert a.returncode == b.returncode == 0
    assert len(a.stdout) == len(b.stdout) == 2 * SR * 2 and a.stdout != b.stdout


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_record_is_complete_and_valid_after_sigterm(tmp_path, suffix):
    path = tmp_path / f"radio{suffix}"
    programme = tmp_path / "programme.toml"
    programme.write_text('[[entries]]\nprompt = "first entry"\nseconds = 1\n'
                         '[[entries]]\nprompt = "second entry"\nseconds = 60\n')
    server = RunningServer("--record", str(path), "--seed", "4", "--stride", "3", "--context", "3",
                           "--schedule", str(programme))
    try:
        server.wait_for_program(int(2.5 * SR) * 2, timeout=30)  # 2.5 s played
        rc = server.terminate_and_wait()
    finally:
        server.stop()
    assert rc == 0, server.log[-2000:]
    info = soundfile.info(str(path))
    assert info.samplerate == SR and info.channels == 1
    audio, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert audio.shape[0] >= int(2.5 * SR), server.log[-3000:]  # at least the 2.5 s it played
    played = np.frombuffer(bytes(server.program), dtype="<i2")
    assert played.size == audio.shape[0]  # the file holds exactly what was played
    recorded_s16 = np.round(np.clip(audio[:, 0], -1, 1) * 32767).astype(np.int16)
    assert np.max(np.abs(recorded_s16.astype(int) - played)) <= 1  # flac is 24-bit
    # The recording says how it was made: tags in the file, every change in FILE.json.
    with soundfile.SoundFile(str(path)) as f:
        assert f.title == "MusicGen radio: first entry" and f.software.startswith("musicgen-radio")
        assert json.loads(f.comment)["seed"] == 4 and json.loads(f.comment)["model"] == "tiny"
    with open(str(path) + ".json") as f:
        about = json.load(f)
    assert about["seed"] == 4 and about["prompt"] == "first entry" and about["sampling"]["cfg"] == 3.0
    [change] = about["changes"]
    assert change["source"] == "schedule" and change["prompt"] == "second entry"
    assert abs(change["program_seconds"] - 1.0) < 0.05 and change["schedule_entry"] == 2


@pytest.mark.parametrize("args, message", [
    (("--model", "no-such-model"), "unknown model"),
    (("--model", "tiny", "--window", "40"), "longer than the model's maximum"),
    (("--model", "tiny", "--stride", "-5"), "--stride must be positive"),
    (("--model", "tiny", "--record", "/proc/no/such/dir/x.wav"), "does not exist"),
    (("--model", "tiny", "--record", "/proc/radio.wav"), "not writable"),
    (("--model", "tiny", "--record", "out.mp4"), ".wav or .flac"),
    (("--model", "tiny", "--prompt", "x" * 3000), "limit is"),
    (("--model", "tiny", "--icecast", "http://host:8000/radio.mp3"), "icecast://source:PASSWORD@"),
    (("--model", "tiny", "--icecast", "icecast://source:pw@host:8000/radio.wav"), ".opus, .ogg or .mp3"),
    (("--model", "tiny", "--max-lag", "1", "--burst", "2"), "--max-lag"),
    (("--model", "tiny", "--dtype", "fp8"), "invalid choice: 'fp8'"),
    (("--model", "tiny", "--stride", "3", "--first-stride", "5"), "--first-stride must be between"),
    (("--model", "tiny", "--play-intro"), "give --from-audio FILE"),
    (("--model", "tiny", "--loudness", "loud"), "--loudness must be between -40 and -5 LUFS, or off"),
    (("--model", "tiny", "--control-token", "short"), "at least 8 characters"),
    (("--model", "tiny", "--temperature", "50"), "--temperature must be between 0 and 10"),
    (("--model", "tiny", "--clock-speed", "0"), "--clock-speed must be above 0"),
    (("--model", "tiny", "--state-dir", "server.py"), "is a file; give a folder"),
    (("--model", "tiny", "--allow-origin", "evil.example"), "give an origin such as"),
    (("--model", "tiny", "--max-listeners", "-1"), "must be 0 (no cap) or more"),
    (("--model", "tiny", "--icecast", "icecast://source:pw-hidden@h:8000/r.wav"), "icecast://source:***@h"),
])
def test_bad_input_exits_2_with_a_clear_error(args, message):
    result = run_server(*args, "--no-play", timeout=60)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err and "pw-hidden" not in err


def test_offline_hub_model_fails_fast_with_advice(tmp_path):
    started = time.monotonic()
    result = run_server("--model", "facebook/musicgen-small", "--no-play", timeout=120,
                        env_extra={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "--model tiny" in err and "--model DIR" in err and "Traceback" not in err
    assert time.monotonic() - started < 60


def test_missing_sound_device_is_one_line_and_other_outputs_keep_running():
    result = run_server("--model", "tiny", "--stdout", "--duration", "2", "--stride", "2",
                        "--audio-device", "987654")
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "sound output" in err and "the other outputs keep running" in err
    assert len(result.stdout) == 2 * SR * 2
