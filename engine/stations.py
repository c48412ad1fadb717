"""Several stations on one model (`--station`, `--stations`): one batched decoder whose slots the
stations share (lm/batcher.py), each station with its own window, stitcher, rings, player,
clock, listeners, encoders, Icecast mounts and recording, its routes under `/s/NAME/`.

The process's main thread runs the shared decode steps; each station plays from a thread of
its own (its producer waits on the batch and decodes its audio there). A station that fails
ends alone: the others play on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import typing as tp

from .lm.batch import BatchedDecoder
from .lm.batcher import StrideBatcher
from .lm.hardware import resolve_dtype
from .lm.model import FastLM
from .lm.weights import UnsupportedModel
from .net.config import NetworkConfig
from .net.redact import SecretRedactor
from .net.service import start_network
from .outputs.config import OutputConfig
from .outputs.file import FileRecorder, check_record_path
from .net.icecast import parse_icecast_url
from .radio import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, raise_open_file_limit
from .rt.clock import PacedClock
from .station.config import ConfigError
from .station.lineup import StationSpec
from .station.schedule import load_schedule
from .station.station import Station

log = logging.getLogger(__name__)


def check(specs: tp.Sequence[StationSpec], outputs: OutputConfig, network: NetworkConfig) -> None:
    """Refuse, before the model loads, what a lineup cannot do (ConfigError and the like)."""
    if outputs.stdout:
        raise ConfigError("--stdout carries one station; with several, read each from /s/NAME/stream.opus")
    if not network.enabled:
        raise ConfigError("several stations are heard through the network side (/s/NAME/): drop --no-network")
    for spec in specs:
        if spec.config.schedule_path:
            load_schedule(spec.config.schedule_path)
        for url in spec.icecast_urls:
            parse_icecast_url(url)
        if spec.record_path:
            check_record_path(spec.record_path)


def play(model, specs: tp.Sequence[StationSpec], outputs: OutputConfig, network: NetworkConfig,
         stop: threading.Event) -> int:
    """Run the stations until `stop` or until each has ended; return the exit code."""
    secrets = [network.control_token] + [parse_icecast_url(u).password for s in specs for u in s.icecast_urls]
    redactor = SecretRedactor(secrets).install()
    try:
        return _play(model, specs, outputs, network, stop, redactor)
    finally:
        redactor.uninstall()


def batcher_for(model, specs: tp.Sequence[StationSpec], slots: int) -> StrideBatcher:
    """One fast decoder for every station's window, batched over `slots` stations."""
    first = specs[0].config
    device = next(model.lm.parameters()).device
    frames = max(round((s.config.context_seconds + s.config.stride_seconds) * float(model.frame_rate)) for s in specs)
    try:
        fast = FastLM(model.lm, max_frames=frames, dtype=resolve_dtype(first.dtype, device), device=device)
    except UnsupportedModel as err:
        raise ConfigError(f"several stations share the fast decoder, which does not run {first.model} ({err}); "
                          f"run it as one station") from err
    batcher = StrideBatcher(BatchedDecoder(fast, slots=slots))
    log.info("stations: one %s decoder for %d stations (%.0f MB of weights, a KV cache of %d positions per station); "
             "freed audiocraft's copy of the LM weights (%.0f MB)", fast.mode, slots, fast.parameter_bytes() / 1e6,
             fast.max_positions, fast.release_source_weights() / 1e6)
    return batcher


def _play(model, specs, outputs: OutputConfig, network: NetworkConfig, stop: threading.Event,
          redactor: SecretRedactor) -> int:
    raise_open_file_limit()
    batcher = batcher_for(model, specs, slots=len(specs))
    stations: tp.Dict[str, Station] = {}
    for spec in specs:
        batcher.join(spec.name)
        config = spec.config
        if config.state_dir:
            config = dataclasses.replace(config, state_dir=os.path.join(config.state_dir, spec.name))
        stations[spec.name] = Station(config, model, batcher=batcher, name=spec.name)
        log.info("station %s: %r, seed %d", spec.name, config.prompt, config.seed)
    service = start_network(stations, network, icecast_urls={s.name: s.icecast_urls for s in specs})
    if service is None:
        return EXIT_BAD_INPUT
    redactor.add(service.auth.token)
    if outputs.play:
        log.info("several stations: none plays on this machine's sound device; listen at http://%s:%d/",
                 network.host, service.port)
    recorders = {s.name: _recorder(stations[s.name], s) for s in specs if s.record_path}
    for name, recorder in recorders.items():
        recorder.start()
        stations[name].add_output(recorder.name_for_logs, recorder.health)
    threads, ends = [], {}
    for name, station in stations.items():
        ends[name] = threading.Event()
        clock = PacedClock(station.player, speed=outputs.clock_speed)
        threads.append(threading.Thread(target=_run_station, args=(name, station, clock, ends[name]),
                                        name=f"station {name}", daemon=True))
    batch_stop = threading.Event()

    def watch() -> None:
        """The global stop reaches every station; the batch stops once they have all ended."""
        while not stop.is_set() and not all(end.is_set() for end in ends.values()):
            stop.wait(0.2)
        for end in ends.values():
            end.set()
        for thread in threads:
            thread.join()
        batch_stop.set()
    for thread in threads:
        thread.start()
    watcher = threading.Thread(target=watch, name="stations", daemon=True)
    watcher.start()
    try:
        batcher.run(batch_stop)  # the shared decode steps, in the main thread
    finally:
        stop.set()
        watcher.join(timeout=60)
        for recorder in recorders.values():
            recorder.stop()
            recorder.join()
        service.stop()
    failed = [name for name, station in stations.items() if station.producer.error is not None]
    return EXIT_FAILED if failed else EXIT_OK


def _run_station(name: str, station: Station, clock, end: threading.Event) -> None:
    try:
        station.play(clock, end)
    except Exception:  # noqa: BLE001 - one station's end is not the others'
        log.exception("station %s stopped", name)
    finally:
        end.set()


def _recorder(station: Station, spec: StationSpec) -> FileRecorder:
    log.info("record: station %s to %s", spec.name, spec.record_path)
    return FileRecorder(station.program_ring, spec.record_path, station.sample_rate, tags={
        "title": f"MusicGen radio {spec.name}: {spec.config.prompt}"[:500], "software": "musicgen-radio",
        "comment": json.dumps({"model": spec.config.model, "seed": spec.config.seed}, ensure_ascii=False)})

