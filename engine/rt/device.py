"""The local sound device (PortAudio via sounddevice). Its callback drives the Player: it is the
station's clock while it plays."""
from __future__ import annotations

import logging
import threading
import typing as tp

from .player import Player

log = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    """No usable sound device; the message says why and what to do."""


def _sounddevice():
    try:
        import sounddevice
    except OSError as err:  # the PortAudio shared library is missing
        raise AudioDeviceError(
            f"no sound output: PortAudio is not installed ({err}); install it "
            f"(Debian: apt-get install libportaudio2) or use --no-play") from err
    return sounddevice


def list_devices() -> str:
    """A printable list of the sound devices, output devices marked."""
    sd = _sounddevice()
    try:
        return str(sd.query_devices())
    except Exception as err:
        raise AudioDeviceError(f"cannot list sound devices: {err}") from err


def _parse_device(device: tp.Optional[str]) -> tp.Union[int, str, None]:
    if device is None:
        return None
    return int(device) if device.isdigit() else device


class DeviceOutput:
    """Plays the Player through a sounddevice OutputStream. The callback only calls
    `Player.render`, which never blocks, locks or logs."""

    def __init__(self, player: Player, device: tp.Optional[str] = None, latency: str = "high"):
        sd = _sounddevice()
        self.player = player
        self._callback_stop = sd.CallbackStop
        self.finished = threading.Event()
        channels = player.stream.channels
        try:
            self.stream = sd.OutputStream(
                samplerate=player.sample_rate, channels=channels, dtype="float32",
                device=_parse_device(device), latency=latency, callback=self._callback,
                finished_callback=self.finished.set)
        except Exception as err:  # PortAudioError, ValueError (no such device)
            raise AudioDeviceError(
                f"cannot open sound output {device or '(default)'}: {err}. "
                f"See --list-devices, pick one with --audio-device, or use --no-play") from err
        self.underflows = 0  # PortAudio output underflows (written by the callback only; /status)

    def _callback(self, outdata, frames, time_info, status) -> None:
        if status.output_underflow:
            self.underflows += 1
        if self.player.render(outdata):
            raise self._callback_stop()

    def start(self) -> None:
        self.stream.start()
        log.info("sound device: playing on %s (%d Hz, %d channel(s), latency %.0f ms)",
                 self.stream.device, int(self.stream.samplerate), self.stream.channels,
                 1000 * self.stream.latency)

    def stop(self) -> None:
        try:
            self.stream.stop()
            self.stream.close()
        finally:
            self.finished.set()
