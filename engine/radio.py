"""The radio: one station with its clock, its outputs and its network side, built from the
config records and run until stopped. server.py turns flags into these records and calls
`check`, `load` and `play`.

    prompt → lm (tokens) → codec (PCM) → rt (ring, player, clock) → station → net / outputs
"""
from __future__ import annotations

import datetime
import json
import logging
import resource
import sys
import threading
import typing as tp

import torch

from .codec.clip import ClipError, read_clip
from .lm.hardware import KVCacheUnavailable, check_kv_cache, resolve_dtype
from .models.load import ModelLoadError, check_model_name, has_melody_conditioning, load_model, resolve_device
from .net.config import NetworkConfig
from .net.icecast import IcecastUrlError
from .net.redact import SecretRedactor
from .net.service import start_network
from .outputs.base import RingSink
from .outputs.config import ClockSpeedError, OutputConfig
from .outputs.file import FileRecorder, RecordPathError
from .outputs.sidecar import RecordingLog
from .outputs.stdout import PcmPipeSink
from .rt.clock import PacedClock
from .rt.device import AudioDeviceError, DeviceOutput
from .station.config import ConfigError, ModelConfig, StationConfig
from .station.schedule import ScheduleError, ScheduleWatcher, load_schedule
from .station.station import Clock, Station

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
#: What `check` and `load` raise for input the user can fix (one line, exit code 2).
INPUT_ERRORS = (ConfigError, ModelLoadError, RecordPathError, IcecastUrlError, ScheduleError, ClipError,
                ClockSpeedError)


def check(models: ModelConfig, engine: StationConfig, outputs: OutputConfig, network: NetworkConfig) -> str:
    """Refuse, before anything loads, every setting that cannot work; return the device
    ("cpu" | "cuda") the model will run on. Raises one of INPUT_ERRORS."""
    models.validate()
    engine.validate()
    if engine.schedule_path:
        load_schedule(engine.schedule_path)
    if engine.from_audio_path:  # readable, long enough, not silent: before the model loads
        read_clip(engine.from_audio_path, None, None, engine.trim_start_seconds, engine.trim_end_seconds)
    if engine.melody_path:
        read_clip(engine.melody_path, None, None, flag="--melody")
    check_model_name(models.name)
    outputs.validate()
    network.validate()
    device = resolve_device(models.device)
    try:  # e.g. int8 asked for on CUDA: refused before the model loads
        check_kv_cache(models.kv_cache, resolve_dtype(models.dtype, torch.device(device)), torch.device(device))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return device


def load(models: ModelConfig, device: str, melody: bool = False):
    """The model (ModelLoadError with what to do when it cannot be loaded, or when a melody
    clip is given (`melody`) to a model without melody conditioning)."""
    model = load_model(models.name, device=device, seed=0, text_encoder=models.text_encoder,
                       dtype=resolve_dtype(models.dtype, torch.device(device)))
    if melody and not has_melody_conditioning(model):
        raise ModelLoadError(f"--melody needs a melody model (facebook/musicgen-melody, facebook/musicgen-melody-large, "
                             f"facebook/musicgen-stereo-melody, ...); {models.name} has no melody conditioning")
    return model


def play(model, models: ModelConfig, engine: StationConfig, outputs: OutputConfig, network: NetworkConfig,
         stop: threading.Event) -> int:
    """Run the station until `stop`, its duration or a failure; return the exit code."""
    redactor = SecretRedactor([network.control_token] + [t.password for t in network.icecast_targets()]).install()
    try:
        return _play(model, models, engine, outputs, network, stop, redactor)
    finally:
        redactor.uninstall()


def _play(model, models: ModelConfig, engine: StationConfig, outputs: OutputConfig, network: NetworkConfig,
          stop: threading.Event, redactor: SecretRedactor) -> int:
    raise_open_file_limit()
    try:
        station = Station(engine, model, model_config=models, release_lm_weights=True)  # the fast decoder holds its own
    except KVCacheUnavailable as err:  # e.g. --kv-cache int4 for a model whose heads are not 64 wide
        log.error("%s", err)
        return EXIT_BAD_INPUT
    service = None
    if network.enabled:
        service = start_network({"": station}, network)
        if service is None:
            return EXIT_BAD_INPUT
        redactor.add(service.auth.token)  # generated on loopback
    sinks = station_sinks(station, outputs)
    clock = _clock(station, outputs)
    for sink in sinks:
        station.add_output(sink.name_for_logs, sink.health)
        sink.start()
    watcher = ScheduleWatcher(engine.schedule_path, station.steering.set_schedule) if engine.schedule_path else None
    if watcher is not None:
        watcher.start()
    try:
        station.play(clock, stop)
    finally:
        if watcher is not None:
            watcher.stop()
        for sink in sinks:
            sink.stop()
            sink.join()
        if service is not None:
            service.stop()
    return EXIT_FAILED if station.producer.error is not None else EXIT_OK


def station_sinks(station: Station, outputs: OutputConfig) -> tp.List[RingSink]:
    """The readers of what `station` plays that `outputs` asks for: its recording (with the
    sidecar of how it was made) and raw PCM on stdout."""
    sinks: tp.List[RingSink] = []
    if outputs.record_path:
        about = _recording_about(station)
        sinks.append(FileRecorder(station.program_ring, outputs.record_path, station.sample_rate, tags={
            "title": f"MusicGen radio: {about['prompt']}"[:500], "software": "musicgen-radio",
            "date": about["started"], "comment": json.dumps(
                {k: about[k] for k in ("model", "seed", "sampling", "window")}, ensure_ascii=False)}))
        recording_log = RecordingLog(outputs.record_path, about)
        station.add_heard_listener(lambda change, program_sample: recording_log.add(dict(
            change.describe(), source="schedule" if change.entry is not None else "control",
            program_seconds=round(program_sample / station.sample_rate, 3),
            stream_seconds=round(change.heard_from_sample / station.sample_rate, 3))))
        log.info("record: writing what is played to %s (how it was made: %s)", outputs.record_path,
                 recording_log.path)
    if outputs.stdout:
        sinks.append(PcmPipeSink(station.program_ring, sys.stdout.buffer))
        log.info("stdout: raw s16le PCM, %d Hz, %d channel(s)", station.sample_rate, station.channels)
    return sinks


def _recording_about(station: Station) -> dict:
    """How the recording is made: model, seed, settings and the conditions it starts with."""
    config = station.config
    playing = station.steering.latest.describe(0)
    sampling = {k: playing[k] for k in ("temperature", "top_k", "top_p", "cfg")}
    return {"model": station.model_config.name, "seed": config.seed, "sample_rate": station.sample_rate,
            "channels": station.channels, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "prompt": playing["prompt"], "prompts": playing["prompts"], "sampling": sampling,
            "window": {"window_seconds": config.window_seconds, "context_seconds": config.context_seconds,
                       "stride_seconds": config.stride_seconds},
            "schedule": config.schedule_path}


def _clock(station: Station, outputs: OutputConfig) -> Clock:
    """The sound device when asked for and present, else the system clock."""
    if outputs.play:
        try:
            return DeviceOutput(station.player, device=outputs.audio_device)
        except AudioDeviceError as err:
            log.error("%s; the other outputs keep running", err)
    log.info("clock: no sound device in use; playback paced by the system clock")
    if outputs.clock_speed != 1.0:
        log.warning("clock: playing %g times faster than real time (--clock-speed, a testing aid)", outputs.clock_speed)
    return PacedClock(station.player, speed=outputs.clock_speed)


def raise_open_file_limit() -> None:
    """Each listener is a socket: allow as many as the system lets this process have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
