"""Several stations on one model (`--station`, `--stations`): one batched decoder whose slots the
stations share (lm/batcher.py), each station with its own window, stitcher, rings, player,
clock, listeners, encoders, Icecast mounts and recording, its routes under `/s/NAME/`.

The process's main thread runs the shared decode steps; each station plays from a thread of
its own (its producer waits on the batch and decodes its audio there). A station that fails
ends alone: the others play on. Stations are added and removed while the others play
(`Lineup.add`, `Lineup.remove`: the lineup's control commands, net/lineup.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import typing as tp

from .lm.batch import BatchedDecoder, padded_slots
from .lm.batcher import StrideBatcher
from .lm.hardware import KVCacheUnavailable, resolve_dtype
from .lm.model import FastLM
from .lm.weights import UnsupportedModel
from .models.memory import available_bytes
from .net.config import NetworkConfig
from .net.icecast import parse_icecast_url
from .net.lineup import LineupConflict
from .net.redact import SecretRedactor
from .net.service import NetworkThread, start_network
from .outputs.base import RingSink
from .outputs.config import OutputConfig
from .outputs.file import check_record_path
from .radio import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, raise_open_file_limit, station_sinks
from .rt.clock import PacedClock
from .station.config import MUSICGEN_MAX_DURATION_SECONDS, ConfigError, ModelConfig, StationConfig
from .station.lineup import StationSpec, check_lineup, station_from_table
from .station.schedule import ScheduleWatcher, load_schedule
from .station.station import Station

log = logging.getLogger(__name__)


def check(specs: tp.Sequence[StationSpec], outputs: OutputConfig, network: NetworkConfig,
          max_stations: tp.Optional[int] = None) -> None:
    """Refuse, before the model loads, what a lineup cannot do (ConfigError and the like)."""
    if outputs.stdout:
        raise ConfigError("--stdout carries one station; with several, read each from /s/NAME/stream.opus")
    if not network.enabled:
        raise ConfigError("several stations are heard through the network side (/s/NAME/): drop --no-network")
    if max_stations is not None and max_stations < len(specs):
        raise ConfigError(f"--max-stations {max_stations} is fewer than the {len(specs)} stations given")
    for spec in specs:
        check_outputs(spec)


def check_outputs(spec: StationSpec) -> None:
    if spec.config.schedule_path:
        load_schedule(spec.config.schedule_path)
    for url in spec.icecast_urls:
        parse_icecast_url(url)
    if spec.record_path:
        check_record_path(spec.record_path)


def batcher_for(model, models: ModelConfig, slots: int) -> StrideBatcher:
    """One fast decoder for any station's window, batched over `slots` stations."""
    device = next(model.lm.parameters()).device
    frames = round(MUSICGEN_MAX_DURATION_SECONDS * float(model.frame_rate))  # any window a station may ask for
    try:
        fast = FastLM(model.lm, max_frames=frames, dtype=resolve_dtype(models.dtype, device), device=device,
                      kv_cache=models.kv_cache)
    except KVCacheUnavailable as err:
        raise ConfigError(str(err)) from err
    except UnsupportedModel as err:
        raise ConfigError(f"several stations share the fast decoder, which does not run {models.name} ({err}); "
                          f"run it as one station") from err
    slot_bytes = fast.cache.k.shape[3] * fast.cache.position_bytes()  # one slot's cache (FastLM's: 2 rows)
    free = available_bytes(device.type)
    allocated = padded_slots(slots) if device.type == "cuda" else slots  # (batch.py: powers of two on CUDA)
    if allocated * slot_bytes > 0.9 * free:
        raise ConfigError(f"{slots} stations need {allocated * slot_bytes / 1e9:.1f} GB of KV cache "
                          f"({slot_bytes / 1e9:.2f} GB each) and {free / 1e9:.1f} GB are free; give fewer stations "
                          f"or a smaller --max-stations")
    batcher = StrideBatcher(BatchedDecoder(fast, slots=slots))
    log.info("stations: one %s decoder with %d slots (%.0f MB of weights, a KV cache of %d positions per slot); "
             "freed audiocraft's copy of the LM weights (%.0f MB)", fast.mode, slots, fast.parameter_bytes() / 1e6,
             fast.max_positions, fast.release_source_weights() / 1e6)
    return batcher


class Lineup:
    """The stations of the process, from start to end; `add` and `remove` (from any thread but
    the batch's and the network loop's) change them while the others play."""

    def __init__(self, model, models: ModelConfig, batcher: StrideBatcher, base: StationConfig,
                 outputs: OutputConfig):
        self.model = model
        self.model_config = models
        self.batcher = batcher
        self.base = base  # the command line's settings: what an added station starts from
        self.outputs = outputs
        self.network: tp.Optional[NetworkThread] = None
        self.stations: tp.Dict[str, Station] = {}
        self._threads: tp.Dict[str, threading.Thread] = {}
        self._ends: tp.Dict[str, threading.Event] = {}
        self._recorders: tp.Dict[str, RingSink] = {}
        self._watchers: tp.Dict[str, ScheduleWatcher] = {}
        self._added = 0
        self._lock = threading.Lock()

    def build(self, spec: StationSpec) -> Station:
        """The station, in its slot of the batch (LineupConflict when none is free)."""
        try:
            self.batcher.join(spec.name)
        except ValueError as err:
            raise LineupConflict(str(err)) from err
        config = spec.config
        if config.state_dir:
            config = dataclasses.replace(config, state_dir=os.path.join(config.state_dir, spec.name))
        try:
            station = Station(config, self.model, model_config=self.model_config, batcher=self.batcher, name=spec.name)
        except BaseException:
            self.batcher.leave(spec.name)
            raise
        self.stations[spec.name] = station
        log.info("station %s: %r, seed %d", spec.name, config.prompt, config.seed)
        return station

    def start(self, spec: StationSpec) -> None:
        """Play it: its recording, its clock, its thread."""
        station = self.stations[spec.name]
        if spec.record_path:  # as one station's --record: the file and its sidecar
            log.info("record: station %s", spec.name)
            (recorder,) = station_sinks(station, dataclasses.replace(self.outputs, record_path=spec.record_path,
                                                                     stdout=False))
            self._recorders[spec.name] = recorder
            recorder.start()
            station.add_output(recorder.name_for_logs, recorder.health)
        if spec.config.schedule_path:  # the programme file is watched, as one station's is
            watcher = self._watchers[spec.name] = ScheduleWatcher(spec.config.schedule_path, station.steering.set_schedule)
            watcher.start()
        end = self._ends[spec.name] = threading.Event()
        clock = PacedClock(station.player, speed=self.outputs.clock_speed)
        thread = self._threads[spec.name] = threading.Thread(
            target=_run_station, args=(spec.name, station, clock, end), name=f"station {spec.name}", daemon=True)
        thread.start()

    # -- LineupControl (net/lineup.py) ------------------------------------------------------------
    def add(self, name: str, settings: tp.Mapping[str, tp.Any]) -> None:
        """A new station with `settings` over the command line's (ValueError says what is wrong)."""
        with self._lock:
            if name in self.stations:
                raise LineupConflict(f"a station named {name!r} already plays; remove it first or pick another name")
            self._added += 1
            spec = station_from_table(name, dict(settings), self.base, len(self.stations) + self._added,
                                      f"add_station {name}")
            check_lineup([spec], float(self.model.max_duration))
            check_outputs(spec)
            self.build(spec)
            self.network.add_station(name, self.stations[name], spec.icecast_urls)
            self.start(spec)
        log.info("stations: %s added (%d playing)", name, len(self.stations))

    def remove(self, name: str) -> None:
        """Stop station NAME (its listeners are told), free its slot; the others play on."""
        with self._lock:
            if name not in self.stations:
                raise ValueError(f"no station named {name!r}; the stations are {', '.join(sorted(self.stations)) or 'none'}")
            self._ends[name].set()
            self._threads[name].join()
            self.batcher.leave(name)
            self.network.remove_station(name)
            recorder = self._recorders.pop(name, None)
            if recorder is not None:
                recorder.stop()
                recorder.join()
            watcher = self._watchers.pop(name, None)
            if watcher is not None:
                watcher.stop()
            del self.stations[name], self._threads[name], self._ends[name]
        log.info("stations: %s removed (%d playing)", name, len(self.stations))

    def figures(self) -> dict:
        """The shared batch: its slots, the strides in progress, the steps run and how many
        stations each step carried on average."""
        b = self.batcher
        return {"slots": b.decoder.slots, "stations": sorted(self.stations), "steps": b.steps,
                "stations_per_step": round(b.busy_slot_steps / b.steps, 2) if b.steps else None}

    # -- the end -----------------------------------------------------------------------------------
    def all_ended(self) -> bool:
        """Every station has ended (by itself: its duration, a failure); none left after
        removals is not an end: stations can be added again."""
        with self._lock:
            return bool(self._ends) and all(end.is_set() for end in self._ends.values())

    def end_all(self) -> None:
        with self._lock:
            ends, threads = list(self._ends.values()), list(self._threads.values())
        for end in ends:
            end.set()
        for thread in threads:
            thread.join()
        for recorder in list(self._recorders.values()):
            recorder.stop()
            recorder.join()
        for watcher in list(self._watchers.values()):
            watcher.stop()

    def failed(self) -> tp.List[str]:
        return [name for name, station in self.stations.items() if station.producer.error is not None]


def play(model, models: ModelConfig, base: StationConfig, specs: tp.Sequence[StationSpec], outputs: OutputConfig,
         network: NetworkConfig, stop: threading.Event, max_stations: tp.Optional[int] = None) -> int:
    """Run the stations until `stop` or until each has ended; return the exit code. `base`:
    the command line's settings, which stations added later start from."""
    secrets = [network.control_token] + [parse_icecast_url(u).password for s in specs for u in s.icecast_urls]
    redactor = SecretRedactor(secrets).install()
    try:
        return _play(model, models, base, specs, outputs, network, stop, redactor, max_stations or len(specs))
    finally:
        redactor.uninstall()


def _play(model, models: ModelConfig, base: StationConfig, specs, outputs: OutputConfig, network: NetworkConfig,
          stop: threading.Event, redactor: SecretRedactor, slots: int) -> int:
    raise_open_file_limit()
    lineup = Lineup(model, models, batcher_for(model, models, slots), base, outputs)
    for spec in specs:
        lineup.build(spec)
    service = start_network(dict(lineup.stations), network, icecast_urls={s.name: s.icecast_urls for s in specs},
                            lineup_control=lineup)
    if service is None:
        return EXIT_BAD_INPUT
    lineup.network = service
    redactor.add(service.auth.token)
    if outputs.play:
        log.info("several stations: none plays on this machine's sound device; listen at http://%s:%d/",
                 network.host, service.port)
    for spec in specs:
        lineup.start(spec)
    batch_stop = threading.Event()

    def watch() -> None:
        """The global stop reaches every station; the batch stops once they have all ended."""
        while not stop.is_set() and not lineup.all_ended():
            stop.wait(0.2)
        lineup.end_all()
        batch_stop.set()
    watcher = threading.Thread(target=watch, name="stations", daemon=True)
    watcher.start()
    try:
        lineup.batcher.run(batch_stop)  # the shared decode steps, in the main thread
    finally:
        stop.set()
        watcher.join(timeout=60)
        service.stop()
    return EXIT_FAILED if lineup.failed() else EXIT_OK


def _run_station(name: str, station: Station, clock, end: threading.Event) -> None:
    try:
        station.play(clock, end)
    except Exception:  # noqa: BLE001 - one station's end is not the others'
        log.exception("station %s stopped", name)
    finally:
        end.set()
