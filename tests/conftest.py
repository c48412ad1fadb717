import os
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
