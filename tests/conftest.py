import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random MusicGen (CPU), built once per test session."""
    from engine.models.load import load_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("tiny", device="cpu", seed=0)


#: Loaded first by every Python process of a test (PYTHONPATH): any connection beyond loopback
#: fails and is written down, so a test can assert that no hub access was attempted.
NETWORK_CUT = """
import os, socket
_connect = socket.socket.connect
def connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
        with open(os.environ["NETWORK_ATTEMPTS"], "a") as f:
            f.write(repr(address) + "\\n")
        raise OSError("network unreachable (test)")
    return _connect(sock, address)
socket.socket.connect = connect
"""


@pytest.fixture()
def network_cut(tmp_path):
    """The environment of a child process with the network cut; yields it and, afterwards,
    asserts that nothing tried to reach the network."""
    folder = tmp_path / "network-cut"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NETWORK_CUT)
    attempts = tmp_path / "network-attempts"
    env = {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
           "NETWORK_ATTEMPTS": str(attempts), "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('203.0.113.7', 443), 2)"],
                           capture_output=True, env=dict(os.environ, **env), timeout=60)
    assert probe.returncode != 0 and b"network unreachable (test)" in probe.stderr  # the cut is real
    attempts.unlink()
    yield env
    assert not attempts.exists(), attempts.read_text()
