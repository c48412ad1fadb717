#!/usr/bin/env python3
"""Endless MusicGen radio: flags → config records → engine/radio.py.

    python server.py --prompt "lofi hip hop"               # plays on the sound device
    python server.py --model tiny --stdout | ffplay -f s16le -ar 32000 -ac 1 -
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    from engine.lm.hardware import DTYPE_CHOICES, KV_CACHE_CHOICES
    from engine.net.config import NetworkConfig
    from engine.station.config import ModelConfig, StationConfig
    d, m, n = StationConfig(), ModelConfig(), NetworkConfig()
    p = argparse.ArgumentParser(
        description="Endless MusicGen radio: generates music stride after stride and plays it.")
    g = p.add_argument_group("music")
    g.add_argument("--prompt", default=d.prompt, help="text description of the music (default: %(default)r)")
    g.add_argument("--schedule", metavar="FILE", default=None,
                   help="a programme of prompts (TOML or JSON: entries of prompt or prompts, seconds, "
                        "morph_seconds; loop = true), played live; the file is watched and reloaded")
    g.add_argument("--station", action="append", default=[], metavar="NAME=PROMPT",
                   help="several stations on one model: each plays at /s/NAME/ with its own prompt (and the "
                        "other flags' settings, the seed + its index); repeat for each station")
    g.add_argument("--stations", metavar="FILE", default=None,
                   help="several stations from a TOML file: [[station]] tables of name, prompt or schedule, "
                        "seed, temperature, top_k, top_p, cfg, window, context, stride, icecast, record")
    g.add_argument("--max-stations", type=int, default=None, metavar="N",
                   help="slots for stations (default: as many as given): more leave room to add stations "
                        "while the others play (POST /control add_station); on CPU each slot costs compute")
    g.add_argument("--model", default=m.name,
                   help="facebook/musicgen-{small,medium,large,melody,stereo-*}, a local checkpoint "
                        "folder, 'tiny' (offline random model: noise) or 'random-small' "
                        "(default: %(default)s)")
    g.add_argument("--text-encoder", metavar="DIR", default=None,
                   help="folder of the text encoder (T5) the checkpoint names; default: MODEL_DIR/t5-base "
                        "when --model is a folder holding it, else the Hugging Face cache")
    g.add_argument("--device", default=m.device, choices=["auto", "cpu", "cuda"],
                   help="where the model runs; auto (default) picks CUDA when present")
    g.add_argument("--dtype", default=m.dtype, choices=DTYPE_CHOICES,
                   help="precision of the language model: auto (default) picks bf16 (else fp16) on "
                        "CUDA and int8 weights on x86 CPUs; int4 (CPU) is faster and less faithful; "
                        "fp32 is the reference")
    g.add_argument("--kv-cache", default=m.kv_cache, choices=KV_CACHE_CHOICES,
                   help="precision of the decoder's KV cache on CPU: auto (default) picks 8-bit (int8) with "
                        "int8 or int4 weights; int4 (4-bit) reads half those bytes per step, for about 5 %% "
                        "more logit error; fp16 is the reference")
    g.add_argument("--seed", type=int, default=None,
                   help="sampling seed; the same seed and flags give the same audio (default: random, logged)")
    g.add_argument("--from-audio", metavar="FILE", default=None,
                   help="continue this music: the clip (wav, flac, ogg, mp3) is encoded to tokens once "
                        "and is the first context")
    g.add_argument("--trim-start", type=float, default=0.0, help="seconds cut from the clip's start (default: 0)")
    g.add_argument("--trim-end", type=float, default=None, help="where the clip ends, in seconds (default: its end)")
    g.add_argument("--play-intro", action="store_true",
                   help="play the clip first (decoded from its tokens) and join the continuation seam-free")
    g.add_argument("--melody", metavar="FILE", default=None,
                   help="melody models (facebook/musicgen-melody, ...): follow this clip's melody, looped "
                        "over the stream (wav, flac, ogg, mp3)")
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
    g.add_argument("--loudness", default="-16", metavar="LUFS",
                   help="loudness target of what is played (a slow gain, ITU-R BS.1770) with a true-peak "
                        "limiter at -1 dBTP; 'off' disables both (default: %(default)s)")
    g.add_argument("--give-up-after", type=float, default=d.give_up_after_seconds, metavar="S",
                   help="failing strides are retried (with backoff; a new piece every 3 failures); the "
                        "station exits with code 1 when they keep failing this long (default: %(default)s)")
    g.add_argument("--state-dir", metavar="DIR", default=None,
                   help="save what the station needs to continue (context tokens, prompts, schedule "
                        "position, sampling, seed, counts) in DIR after every stride, and resume from "
                        "it at start; a state from another model or a damaged file is refused and the "
                        "station starts fresh")
    g.add_argument("--duration", type=float, default=None, help="stop after this many seconds of audio")
    g.add_argument("--no-play", action="store_true", help="do not use the local sound device")
    g.add_argument("--audio-device", default=None, help="sound device number or name (see --list-devices)")
    g.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    g.add_argument("--stdout", action="store_true",
                   help="write raw s16le PCM (model rate and channels) to stdout; logs go to stderr")
    g.add_argument("--clock-speed", type=float, default=1.0, metavar="X",
                   help="testing aid, with --no-play: play X times faster than real time (soak runs)")
    g.add_argument("--record", metavar="FILE", default=None,
                   help="write what is played to FILE (.wav or .flac)")
    g = p.add_argument_group("network")
    g.add_argument("--host", default=n.host, help="address to serve on (default: %(default)s)")
    g.add_argument("--port", type=int, default=n.port,
                   help="port for the page, /ws, /stream.opus, /stream.mp3 and /status; 0 picks a free "
                        "one (default: %(default)s)")
    g.add_argument("--no-network", action="store_true", help="serve nothing on the network")
    g.add_argument("--burst", type=float, default=n.burst_seconds,
                   help="seconds of audio a new listener gets at once, ≤ 10 (default: %(default)s)")
    g.add_argument("--max-lag", type=float, default=n.max_lag_seconds,
                   help="drop a listener this many seconds behind the live point (default: %(default)s)")
    g.add_argument("--icecast", action="append", default=[], metavar="URL",
                   help="push to an Icecast server: icecast://source:PASSWORD@HOST:PORT/mount.opus "
                        "(or .mp3); repeat for several mounts")
    g.add_argument("--control-token", default=None, metavar="TOKEN",
                   help="token that POST /control and WebSocket commands need (at least 8 characters); "
                        "default: $RADIO_CONTROL_TOKEN, else generated and printed once on a loopback "
                        "address, control off on others")
    g.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages of this origin (e.g. https://example.org; * for any) use the WebSocket "
                        "and POST /control; browsers' cross-site requests are refused otherwise (repeatable)")
    g.add_argument("--max-listeners", type=int, default=n.max_listeners, metavar="N",
                   help="listeners at once (WebSocket and HTTP streams); the next is told the station is "
                        "full (WebSocket close 1013, HTTP 503); 0: no cap (default: %(default)s)")
    g.add_argument("--max-listeners-per-ip", type=int, default=n.max_listeners_per_ip, metavar="N",
                   help="listeners from one address; 0: no cap (behind a reverse proxy every listener "
                        "has the proxy's address: use 0) (default: %(default)s)")
    g.add_argument("--handshake-timeout", type=float, default=n.handshake_timeout_seconds, metavar="S",
                   help="cut a connection whose request headers have not all arrived after S seconds "
                        "(default: %(default)s)")
    g.add_argument("--control-rate", type=float, default=n.control_per_second, metavar="PER_SECOND",
                   help="control commands a client address may send per second (bursts of 4x); more are "
                        "refused with HTTP 429 or an error message (default: %(default)s)")
    g.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="(default: %(default)s)")
    return p


def configs_from_args(args):
    """(ModelConfig, StationConfig, OutputConfig, NetworkConfig) from the parsed flags."""
    from engine.net.config import NetworkConfig
    from engine.outputs.config import OutputConfig
    from engine.station.config import ModelConfig, StationConfig
    models = ModelConfig(name=args.model, text_encoder=args.text_encoder, device=args.device, dtype=args.dtype,
                         kv_cache=args.kv_cache)
    engine = StationConfig(
        prompt=args.prompt, schedule_path=args.schedule, from_audio_path=args.from_audio,
        trim_start_seconds=args.trim_start, trim_end_seconds=args.trim_end, play_intro=args.play_intro,
        melody_path=args.melody, window_seconds=args.window,
        context_seconds=args.context, stride_seconds=args.stride,
        first_stride_seconds=args.first_stride, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, cfg_coef=args.cfg,
        seed=args.seed if args.seed is not None else random.randrange(2**31),
        buffer_ahead_seconds=args.buffer_ahead, prefill_seconds=args.prefill,
        duration_seconds=args.duration, loudness_lufs=_loudness(args.loudness),
        give_up_after_seconds=args.give_up_after, fault_spec=os.environ.get("RADIO_FAULTS"),
        state_dir=args.state_dir)
    outputs = OutputConfig(play=not args.no_play, audio_device=args.audio_device, stdout=args.stdout,
                           record_path=args.record, clock_speed=args.clock_speed)
    network = NetworkConfig(enabled=not args.no_network, host=args.host, port=args.port,
                            burst_seconds=args.burst, max_lag_seconds=args.max_lag,
                            icecast_urls=tuple(args.icecast),
                            control_token=args.control_token or os.environ.get("RADIO_CONTROL_TOKEN") or None,
                            allow_origins=tuple(args.allow_origin), max_listeners=args.max_listeners,
                            max_listeners_per_ip=args.max_listeners_per_ip,
                            handshake_timeout_seconds=args.handshake_timeout,
                            control_per_second=args.control_rate)
    return models, engine, outputs, network


def stations_from_args(args, engine):
    """The stations of --station and --stations (StationSpec), each over `engine`'s settings;
    an empty list for the single station at /."""
    from engine.station.config import MUSICGEN_MAX_DURATION_SECONDS
    from engine.station.lineup import check_lineup, load_stations_file, parse_station_flag
    specs = [parse_station_flag(value, engine, i) for i, value in enumerate(args.station)]
    if args.stations:
        specs += load_stations_file(args.stations, engine, first_index=len(specs))
    if specs:
        check_lineup(specs, MUSICGEN_MAX_DURATION_SECONDS)
    return specs


def _loudness(value: str):
    """--loudness: a number of LUFS or "off" (None); anything else is left for validation to refuse."""
    if value.strip().lower() == "off":
        return None
    try:
        return float(value)
    except ValueError:
        return float("nan")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("audiocraft", "xformers", "numba", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from engine import radio
    from engine.models.load import ModelLoadError
    from engine.rt.device import AudioDeviceError, list_devices

    if args.list_devices:
        try:
            print(list_devices())
            return radio.EXIT_OK
        except AudioDeviceError as err:
            log.error("%s", err)
            return radio.EXIT_FAILED

    models, engine, outputs, network = configs_from_args(args)
    try:
        device = radio.check(models, engine, outputs, network)
        lineup = stations_from_args(args, engine)
        if lineup:
            from engine import stations
            stations.check(lineup, outputs, network, args.max_stations)
    except radio.INPUT_ERRORS as err:
        parser.error(str(err))  # one line, exit code 2
    try:
        model = radio.load(models, device, melody=bool(engine.melody_path))
    except ModelLoadError as err:
        log.error("%s", err)
        return radio.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.info("interrupted while loading the model")
        return radio.EXIT_INTERRUPTED
    stop = threading.Event()
    _stop_on_signals(stop, radio.EXIT_INTERRUPTED)
    if lineup:
        try:
            return stations.play(model, models, engine, lineup, outputs, network, stop, args.max_stations)
        except radio.INPUT_ERRORS as err:
            log.error("%s", err)
            return radio.EXIT_BAD_INPUT
    return radio.play(model, models, engine, outputs, network, stop)


def _stop_on_signals(stop: threading.Event, exit_code: int) -> None:
    """SIGINT / SIGTERM stop the radio cleanly (listeners get a close frame with the reason, the
    recording is finalised, the state is saved); a second one exits at once."""
    received = []

    def handle(signum, frame):
        received.append(signum)
        if len(received) > 1:
            os.write(2, f"{signal.Signals(signum).name} again: exiting at once\n".encode())
            os._exit(exit_code)
        log.info("%s: stopping cleanly (send it again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


if __name__ == "__main__":
    sys.exit(main())
