"""`--state-dir DIR`: what a station needs to continue the same music after a restart, saved
atomically after every stride and read back at start.

The file `DIR/station.state` is one JSON header line and the context codes (int16, [K, T]),
behind a magic line and the SHA-256 of both: a truncated or altered file is refused, never
half-read. Writes go to a temporary file in DIR, fsynced, then renamed over the old one, so a
`kill -9` at any moment leaves the previous state or the new one, whole. No pickle: a state file
cannot run code.

Stream time restarts at 0 in the new process (the rings, the playhead); frame positions in the
saved conditions and schedule are kept relative to the saved stream end and shifted on load.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
import typing as tp

import numpy as np
import torch

from ..lm.window import PromptMix, SamplingParams
from .steering import Conditions

log = logging.getLogger(__name__)

#: Bumped whenever the file's meaning changes; another version is refused.
STATE_VERSION = 1
MAGIC = b"musicgen-radio state\n"
FILE_NAME = "station.state"
TEMP_PREFIX = ".station.state."  # a save in progress


class StateError(ValueError):
    """A state file that cannot be used (another model or version, truncated, corrupt); the
    message says which and what happens."""


def model_signature(model_name: str, model) -> dict:
    """What a state's tokens only make sense for: the model and its token layout."""
    lm = model.lm
    return {"model": model_name, "codebooks": int(lm.n_q), "card": int(lm.card), "dim": int(lm.dim),
            "sample_rate": int(model.sample_rate), "frame_rate": float(model.frame_rate),
            "channels": int(model.audio_channels)}


@dataclasses.dataclass
class StationState:
    """A station at a stride boundary. Frames count from the saved stream end (frame 0 = the
    first frame generated after a resume): a morph that started before it has a negative start."""
    signature: dict
    seed: int
    stride_index: int  # strides generated so far: the next stride's seed is (seed, stride_index)
    stream_seconds: float  # stream time generated so far
    conditions: Conditions  # prompts (a morph under way included) and sampling settings
    context: tp.Optional[torch.Tensor]  # [1, K, T ≤ context frames] codes that prompt the next stride
    schedule: tp.Optional[dict] = None  # {"path", "origin_frame", "scheduled_until_frame"}
    prompt_flag: str = ""  # the --prompt the station was started with
    saved_at: str = ""

    # -- bytes --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        mix, sampling = self.conditions.mix, self.conditions.sampling
        codes = b""
        shape = None
        if self.context is not None:
            array = self.context[0].to("cpu", torch.int64).numpy()
            if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int16).max):
                raise ValueError("codes out of the int16 range")
            codes, shape = array.astype("<i2").tobytes(), list(array.shape)
        header = {
            "version": STATE_VERSION, "signature": self.signature, "seed": self.seed,
            "stride_index": self.stride_index, "stream_seconds": self.stream_seconds,
            "prompts": {"texts": list(mix.texts), "weights": list(mix.weights),
                        "start_weights": None if mix.start_weights is None else list(mix.start_weights),
                        "morph_start_frame": mix.morph_start_frame, "morph_frames": mix.morph_frames},
            "sampling": dataclasses.asdict(sampling), "context_shape": shape,
            "schedule": self.schedule, "prompt_flag": self.prompt_flag,
            "saved_at": self.saved_at or datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        body = json.dumps(header, ensure_ascii=True).encode() + b"\n" + codes
        return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "StationState":
        """Raises StateError for anything but a whole, valid state of this version."""
        if not data.startswith(MAGIC):
            raise StateError("not a station state file")
        digest, _, body = data[len(MAGIC):].partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise StateError("the file is truncated or corrupt (checksum mismatch)")
        line, _, codes = body.partition(b"\n")
        try:
            header = json.loads(line)
            if header.get("version") != STATE_VERSION:
                raise StateError(f"it was saved by another version (state format {header.get('version')!r}, "
                                 f"this one reads {STATE_VERSION})")
            p = header["prompts"]
            mix = PromptMix(tuple(str(t) for t in p["texts"]), tuple(float(w) for w in p["weights"]),
                            None if p["start_weights"] is None else tuple(float(w) for w in p["start_weights"]),
                            int(p["morph_start_frame"]), int(p["morph_frames"]))
            sampling = SamplingParams(**header["sampling"])
            context = None
            if header["context_shape"] is not None:
                array = np.frombuffer(codes, dtype="<i2").reshape(header["context_shape"])
                context = torch.from_numpy(array.astype(np.int64))[None]
            return cls(signature=dict(header["signature"]), seed=int(header["seed"]),
                       stride_index=int(header["stride_index"]), stream_seconds=float(header["stream_seconds"]),
                       conditions=Conditions(mix, sampling), context=context, schedule=header["schedule"],
                       prompt_flag=str(header.get("prompt_flag", "")), saved_at=str(header.get("saved_at", "")))
        except StateError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise StateError(f"its contents are malformed ({type(err).__name__}: {err})") from err


class StateStore:
    """The state file of one station in `folder` (created if missing)."""

    def __init__(self, folder: str, signature: dict):
        self.folder = folder
        self.signature = signature
        self.path = os.path.join(folder, FILE_NAME)
        self.saves = 0

    def save(self, state: StationState) -> None:
        """Write `state` atomically: a temporary file, fsynced, renamed over the old one."""
        data = state.to_bytes()
        os.makedirs(self.folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_folder(self.folder)
        self.saves += 1

    def load(self) -> tp.Optional[StationState]:
        """The saved state, or None when there is none. Raises StateError (with the path and what
        happens next) for one this station cannot continue. Temporary files left by a save
        that was killed half-way are removed."""
        self._remove_leftovers()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateError(f"{self.path}: cannot be read ({err.strerror})") from err
        try:
            state = StationState.from_bytes(data)
        except StateError as err:
            raise StateError(f"{self.path}: {err}") from None
        if state.signature != self.signature:
            theirs = {k: v for k, v in state.signature.items() if self.signature.get(k) != v}
            raise StateError(f"{self.path}: saved for another model ({theirs}, this station runs "
                             f"{self.signature['model']})")
        return state

    def _remove_leftovers(self) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if name.startswith(TEMP_PREFIX):
                try:
                    os.unlink(os.path.join(self.folder, name))
                except OSError:
                    pass

    def set_aside(self) -> str:
        """Rename a refused state file out of the way (kept for a look); returns the new path."""
        target = self.path + ".refused"
        os.replace(self.path, target)
        return target


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
