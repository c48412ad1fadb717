#!/usr/bin/env python3
"""Endless MusicGen radio: CLI → engine → sinks.

    python server.py --prompt "lofi hip hop"               # plays on the sound device
    python server.py --model tiny --stdout | ffplay -f s16le -ar 32000 -ac 1 -
"""
from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading

log = logging.getLogger("server")

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from engine.config import DTYPE_CHOICES, EngineConfig
    d = EngineConfig()
    p = argparse.ArgumentParser(
        description="Endless MusicGen radio: generates music stride after stride and plays it.")
    g = p.add_argument_group("music")
    g.add_argument("--prompt", default=d.prompt, help="text description of the music (default: %(default)r)")
    g.add_argument("--model", default=d.model,
                   help="facebook/musicgen-{small,medium,large,melody,stereo-*}, a local checkpoint "
                        "folder, 'tiny' (offline random model: noise) or 'random-small' "
                        "(default: %(default)s)")
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"],
                   help="where the model runs; auto (default) picks CUDA when present")
    g.add_argument("--dtype", default=d.dtype, choices=DTYPE_CHOICES,
                   help="precision of the language model: auto (default) picks bf16 (else fp16) on "
                        "CUDA and int8 weights on x86 CPUs; fp32 is the reference")
    g.add_argument("--seed", type=int, default=None,
                   help="sampling seed; the same seed and flags give the same audio (default: random, logged)")
    g = p.add_argument_group("sliding window (seconds)")
    g.add_argument("--window", type=float, default=d.window_seconds, help="window the model sees, ≤ 30 (default: %(default)s)")
    g.add_argument("--context", type=float, default=d.context_seconds,
                   help="seconds of previous tokens that prompt each stride (default: %(default)s)")
    g.add_argument("--stride", type=float, default=d.stride_seconds, help="new seconds generated per stride (default: %(default)s)")
    g.add_argument("--first-stride", type=float, default=None,
                   help="length of the first stride; the next ones double up to --stride, so the "
                        "first sound comes sooner (default: 1 on CUDA, --stride on CPU)")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature, 0 means greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=d.top_k, help="top-k sampling (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling, 0 disables it (default: %(default)s)")
    g.add_argument("--cfg", type=float, default=d.cfg_coef, help="classifier-free guidance coefficient (default: %(default)s)")
    g = p.add_argument_group("buffering and output")
    g.add_argument("--buffer-ahead", type=float, default=None,
                   help="seconds kept generated ahead of playback (default: 2 × stride + 1)")
    g.add_argument("--prefill", type=float, default=d.prefill_seconds,
                   help="seconds buffered before playback starts (default 0: as soon as the first stride is ready)")
    g.add_argument("--duration", type=float, default=None, help="stop after this many seconds of audio")
    g.add_argument("--no-play", action="store_true", help="do not use the local sound device")
    g.add_argument("--audio-device", default=None, help="sound device number or name (see --list-devices)")
    g.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    g.add_argument("--stdout", action="store_true",
                   help="write raw s16le PCM (model rate and channels) to stdout; logs go to stderr")
    g.add_argument("--record", metavar="FILE", default=None,
                   help="write what is played to FILE (.wav or .flac)")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    g.add_argument("--port", type=int, default=8765,
                   help="port for the page, /ws, /stream.opus, /stream.mp3 and /status; 0 picks a free "
                        "one (default: %(default)s)")
    g.add_argument("--no-network", action="store_true", help="serve nothing on the network")
    g.add_argument("--burst", type=float, default=2.0,
                   help="seconds of audio a new listener gets at once, ≤ 10 (default: %(default)s)")
    g.add_argument("--max-lag", type=float, default=10.0,
                   help="drop a listener this many seconds behind the live point (default: %(default)s)")
    g.add_argument("--icecast", action="append", default=[], metavar="URL",
                   help="push to an Icecast server: icecast://source:PASSWORD@HOST:PORT/mount.opus "
                        "(or .mp3); repeat for several mounts")
    g.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="(default: %(default)s)")
    return p


def config_from_args(args):
    from engine.config import EngineConfig
    return EngineConfig(
        prompt=args.prompt, model=args.model, device=args.device, dtype=args.dtype,
        window_seconds=args.window,
        context_seconds=args.context, stride_seconds=args.stride,
        first_stride_seconds=args.first_stride, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, cfg_coef=args.cfg,
        seed=args.seed if args.seed is not None else random.randrange(2**31),
        buffer_ahead_seconds=args.buffer_ahead, prefill_seconds=args.prefill,
        duration_seconds=args.duration)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("audiocraft", "xformers", "numba", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from engine.config import ConfigError
    from engine.fastlm import resolve_dtype
    from engine.models import ModelLoadError, check_model_name, load_model, resolve_device
    from engine.sinks.file_sink import RecordPathError, check_record_path
    from engine.sinks.icecast import IcecastUrlError, parse_icecast_url
    from engine.sinks.sounddevice_sink import AudioDeviceError, list_devices

    if args.list_devices:
        try:
            print(list_devices())
            return 0
        except AudioDeviceError as err:
            log.error("%s", err)
            return 1

    config = config_from_args(args)
    try:
        config.validate()
        check_model_name(config.model)
        if args.record:
            check_record_path(args.record)
        if not 0 <= args.burst <= 10:
            raise ConfigError(f"--burst must be between 0 and 10 seconds (got {args.burst:g})")
        if args.max_lag <= args.burst:
            raise ConfigError(f"--max-lag ({args.max_lag:g} s) must be longer than --burst ({args.burst:g} s)")
        icecast_targets = [parse_icecast_url(url) for url in args.icecast]
        if icecast_targets and args.no_network:
            raise ConfigError("--icecast needs the network side: drop --no-network")
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535 (got {args.port})")
        device = resolve_device(config.device)
        try:  # e.g. int8 asked for on CUDA: refused before the model loads
            resolve_dtype(config.dtype, torch.device(device))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    except (ConfigError, ModelLoadError, RecordPathError, IcecastUrlError) as err:
        parser.error(str(err))  # one line, exit code 2

    try:
        model = load_model(config.model, device=device, seed=0)
    except ModelLoadError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.info("interrupted while loading the model")
        return 130
    _raise_open_file_limit()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return run_station(config, model, args, stop)


def run_station(config, model, args, stop: threading.Event) -> int:
    from engine.player import PacedClock
    from engine.sinks.file_sink import FileRecorder
    from engine.sinks.sounddevice_sink import AudioDeviceError, DeviceOutput
    from engine.sinks.stdout_sink import PcmPipeSink
    from engine.station import Station

    station = Station(config, model, release_lm_weights=True)  # the fast decoder holds its own
    network = None
    if not args.no_network:
        network = start_network(station, args)
        if network is None:
            return EXIT_BAD_INPUT
    sinks = []
    if args.record:
        sinks.append(FileRecorder(station.program_ring, args.record, station.sample_rate))
        log.info("record: writing what is played to %s", args.record)
    if args.stdout:
        sinks.append(PcmPipeSink(station.program_ring, sys.stdout.buffer))
        log.info("stdout: raw s16le PCM, %d Hz, %d channel(s)", station.sample_rate, station.channels)
    clock = None
    if not args.no_play:
        try:
            clock = DeviceOutput(station.player, device=args.audio_device)
        except AudioDeviceError as err:
            log.error("%s; the other outputs keep running", err)
    if clock is None:
        clock = PacedClock(station.player)
        log.info("clock: no sound device in use; playback paced by the system clock")
    for sink in sinks:
        sink.start()

    def supervise() -> None:
        """Pre-fill, then play until stopped, finished or failed; then stop the producer."""
        try:
            if station.wait_for_prefill(stop):
                clock.start()
                while not stop.is_set() and not station.finished and station.producer.error is None:
                    stop.wait(0.1)
                    station.update_metrics()
        finally:
            if stop.is_set():
                log.info("stopping: finishing the outputs")
            clock.stop()
            station.stop()

    # Generation runs in this (the main) thread, where torch's OpenMP workers stay warm; the
    # playback side is a thread of its own (see Station.start).
    supervisor = threading.Thread(target=supervise, name="station", daemon=True)
    station.start(producer_thread=False)
    supervisor.start()
    try:
        station.run_producer()
        while supervisor.is_alive():
            supervisor.join(timeout=0.2)
    finally:
        stop.set()
        supervisor.join(timeout=30)
        for sink in sinks:
            sink.stop()
            sink.join()
        if network is not None:
            network.stop()
    m = station.metrics
    log.info("played %.1f s of audio; %d strides, %d underruns, first sound after %s s",
             m.playhead_samples / station.sample_rate, len(m.strides), m.underruns, m.first_sound_seconds)
    return 1 if station.producer.error is not None else 0


def _raise_open_file_limit() -> None:
    """Each listener is a socket: allow as many as the system lets this process have."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def start_network(station, args):
    """Start the web side (page, WebSocket, HTTP streams, status); None if the port is taken."""
    from engine.broadcast import Broadcaster
    from engine.webapp import NetworkThread
    broadcaster = Broadcaster(station.program_ring, station.sample_rate, station.channels,
                              burst_seconds=args.burst, max_lag_seconds=args.max_lag)
    from engine.sinks.icecast import IcecastSource, parse_icecast_url
    sources = [IcecastSource(parse_icecast_url(url), broadcaster, station.config.prompt)
               for url in args.icecast]
    network = NetworkThread(station, broadcaster, args.host, args.port,
                            extra_tasks=[source.run for source in sources])
    network.start()
    network.ready.wait(30)
    if network.error is not None:
        log.error("cannot serve on %s:%d: %s; pick another --port (0: any free port)",
                  args.host, args.port, network.error)
        return None
    return network


if __name__ == "__main__":
    sys.exit(main())
