"""The station: wires generator → stitcher → stream ring → player → program ring for one model
and one configuration, and plays it from a clock (`play`). Outputs and the network read its
program ring; they are attached by the caller (engine/radio.py)."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import typing as tp

import numpy as np
import torch

from ..codec.clip import encode_clip, read_clip
from ..codec.loudness import LoudnessLeveler
from ..codec.stitcher import StitchingDecoder
from ..lm.batcher import StrideBatcher
from ..lm.window import PromptMix, SamplingParams, WindowGenerator
from ..rt.player import Player
from ..rt.ring import PcmRing
from .config import ModelConfig, StationConfig
from .metrics import EngineMetrics
from .faults import FailurePolicy, FaultPlan
from .logs import StationLog
from .producer import Producer
from .schedule import load_schedule
from .state import StateError, StateStore, StationState, model_signature
from .steering import Conditions, Steering

log = logging.getLogger(__name__)

#: The first stride after a cut-in: short, so that the change is heard soon (then the ramp).
CUT_STRIDE_SECONDS = 1.0


class Clock(tp.Protocol):
    """What drives the player: the sound device (rt/device.py) or the system clock (rt/clock.py)."""
    underflows: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Station:
    """One endless (or `duration_seconds` long) stream of generated music. With `batcher`, its
    strides run in decode steps shared with the other stations of the process (lm/batcher.py),
    as `name`, which has joined it."""

    def __init__(self, config: StationConfig, model, *, model_config: tp.Optional[ModelConfig] = None,
                 program_seconds: float = 30.0, release_lm_weights: bool = False,
                 batcher: tp.Optional[StrideBatcher] = None, name: str = ""):
        """`model`: the loaded model; `model_config`: how it was asked for (its name in the
        status and the saved state, the decoder's precision)."""
        config.validate(max_duration_seconds=float(model.max_duration))
        self.model_config = model_config or ModelConfig()
        self.name = name
        self.log = StationLog(log, name)  # lines prefixed with the station's name in a lineup
        self.config = config
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.channels = int(model.audio_channels)
        frame_rate = float(model.frame_rate)
        sr = self.sample_rate
        self.stride_frames = max(1, round(config.stride_seconds * frame_rate))
        context_frames = round(config.context_seconds * frame_rate)
        self.buffer_ahead_samples = int(config.resolved_buffer_ahead_seconds * sr)
        self.end_sample = None if config.duration_seconds is None else int(round(config.duration_seconds * sr))
        self.state_store = (StateStore(config.state_dir, model_signature(self.model_config.name, model))
                            if config.state_dir else None)
        self.resumed = self._load_state()  # the state this run continues from, or None
        seed = self.resumed.seed if self.resumed else config.seed
        self.metrics = EngineMetrics(sample_rate=sr, model=self.model_config.name, seed=seed)
        self.steering = self._steering(config)
        self.generator = WindowGenerator(model, context_frames, self.steering.latest.sampling, seed=seed,
                                         dtype=self.model_config.dtype, kv_cache=self.model_config.kv_cache,
                                         max_frames=context_frames + self.stride_frames,
                                         release_weights=release_lm_weights, batcher=batcher, station=name,
                                         buffered=lambda: self.buffered_samples / sr)
        if self.resumed:
            self.generator.set_context(self.resumed.context)
            self.generator.stride_index = self.resumed.stride_index
        self.stitcher = StitchingDecoder(model.compression_model)
        history = int(config.history_seconds * sr)
        self.stream_ring = PcmRing(self.buffer_ahead_samples + history + sr, self.channels)
        self.program_ring = PcmRing(int(program_seconds * sr), self.channels)
        self.player = Player(self.stream_ring, self.program_ring, sr, end_sample=self.end_sample)
        self.producer = Producer(
            self.generator, self.stitcher, self.stream_ring, prompt=config.prompt,
            stride_frames=self.stride_frames, buffer_ahead_samples=self.buffer_ahead_samples,
            playhead=lambda: self.player.playhead, metrics=self.metrics, end_sample=self.end_sample,
            first_stride_frames=max(1, round(self.first_stride_seconds * frame_rate)),
            underruns=lambda: self.player.underruns, steering=self.steering,
            leveler=None if config.loudness_lufs is None else LoudnessLeveler(sr, self.channels, config.loudness_lufs),
            faults=FaultPlan.parse(config.fault_spec, station=name),
            failures=FailurePolicy(give_up_after_seconds=config.give_up_after_seconds),
            cut_stride_frames=max(1, round(min(CUT_STRIDE_SECONDS, config.stride_seconds) * frame_rate)), name=name)
        if self.state_store is not None:
            self.producer.on_stride_done = self._save_state
        if self.resumed:
            self.producer.fade_in_at_start()  # the music goes on from the saved context: no hard start
        if config.from_audio_path and self.resumed:
            self.log.info("from-audio: not used: the saved state's context goes on (a fresh --state-dir starts from the clip)")
        elif config.from_audio_path:
            self._continue_clip(config)
        if config.melody_path:
            self._follow_melody(config.melody_path)
        self.clock: tp.Optional[Clock] = None
        self._state_failing = False
        self._heard_listeners: tp.List[tp.Callable[[tp.Any, int], None]] = []
        self._outputs: tp.Dict[str, tp.Callable[[], dict]] = {}  # name → its health (add_output)
        self.log.info("station: window %.1f s, context %.1f s, stride %.1f s (%d frames), buffer ahead "
                 "%.1f s, seam hold-back %d ms, seed %d", config.window_seconds, config.context_seconds,
                 config.stride_seconds, self.stride_frames, config.resolved_buffer_ahead_seconds,
                 1000 * self.stitcher.holdback_frames * self.stitcher.hop_samples // sr, seed)

    def _steering(self, config: StationConfig) -> Steering:
        """The control side, starting from the flags (prompt or schedule, sampling) or, when
        resuming, from the saved conditions and schedule position."""
        saved = self.resumed
        sampling = saved.conditions.sampling if saved else SamplingParams(
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, cfg_coef=config.cfg_coef)
        if not config.schedule_path:
            if saved:
                return Steering(saved.conditions)
            if config.prompts:
                texts, weights = zip(*config.prompts)
                return Steering(Conditions(PromptMix(tuple(texts), tuple(weights)), sampling))
            return Steering(Conditions.single(config.prompt, sampling))
        schedule = load_schedule(config.schedule_path)
        self.log.info("schedule: %s, %d entries%s", config.schedule_path, len(schedule.entries),
                 " (loop)" if schedule.loop else "")
        if saved and saved.schedule and saved.schedule.get("path") == config.schedule_path:
            steering = Steering(saved.conditions)
            steering.start_schedule(schedule, saved.schedule["origin_frame"], saved.schedule["scheduled_until_frame"])
            return steering
        first = schedule.entries[0].prompts
        steering = Steering(Conditions(PromptMix(tuple(t for t, _ in first), tuple(w for _, w in first)), sampling))
        steering.start_schedule(schedule)
        return steering

    # -- --state-dir ----------------------------------------------------------------------------
    def _load_state(self) -> tp.Optional[StationState]:
        """The saved state to continue from; a refused one is set aside (logged) and the
        station starts fresh."""
        store = self.state_store
        if store is None:
            return None
        try:
            state = store.load()
        except StateError as err:
            try:
                aside = store.set_aside()
            except OSError:
                aside = "left in place"
            self.log.warning("state: refused %s; starting fresh (the old file: %s)", err, aside)
            return None
        if state is None:
            self.log.info("state: none in %s yet; starting fresh (saved after every stride)", store.folder)
            return None
        if state.prompt_flag != self.config.prompt:
            self.log.info("state: the saved prompts go on (--prompt is used only for a fresh start)")
        self.log.info("state: resuming from %s (saved %s): stride %d, %.1f s of stream, prompt %r, seed %d",
                 store.path, state.saved_at, state.stride_index, state.stream_seconds,
                 state.conditions.describe(0)["prompt"][:120], state.seed)
        return state

    def _save_state(self) -> None:
        """After a stride (the producer's thread): the state at the end of what is generated.
        A failing disk is logged, once per run of failures, and never stops the music."""
        generator, steering, hop = self.generator, self.steering, self.stitcher.hop_samples
        end = generator.frames_emitted
        mix = steering.latest.mix
        mix = dataclasses.replace(mix, morph_start_frame=mix.morph_start_frame - end)
        position = steering.schedule_position()
        schedule = None if position is None or not self.config.schedule_path else {
            "path": self.config.schedule_path, "origin_frame": position[0] - end,
            "scheduled_until_frame": position[1] - end}
        base = self.resumed.stream_seconds if self.resumed else 0.0
        state = StationState(signature=self.state_store.signature, seed=generator.seed,
                             stride_index=generator.stride_index,
                             stream_seconds=round(base + end * hop / self.sample_rate, 3),
                             conditions=dataclasses.replace(steering.latest, mix=mix),
                             context=generator.context, schedule=schedule, prompt_flag=self.config.prompt)
        try:
            self.state_store.save(state)
        except OSError as err:
            if not self._state_failing:
                self.log.error("state: cannot save to %s (%s); the music goes on, retrying after each stride",
                          self.state_store.folder, err.strerror or err)
            self._state_failing = True
            return
        if self._state_failing:
            self.log.info("state: saving again to %s", self.state_store.folder)
        self._state_failing = False

    def _continue_clip(self, config: StationConfig) -> None:
        """The clip's tokens become the first context; with play_intro the clip (decoded from
        those tokens, so that the join is seam-exact) is the start of the stream."""
        audio = read_clip(config.from_audio_path, self.sample_rate, self.channels,
                          config.trim_start_seconds, config.trim_end_seconds)
        clip = encode_clip(self.model.compression_model, audio, config.context_seconds, float(self.model.frame_rate))
        if config.play_intro:
            self.producer.intro_codes = clip.codes
        else:
            self.generator.set_context(clip.codes)
        self.log.info("from-audio: %s, %.1f s encoded to %d frames of tokens: the first context%s",
                 config.from_audio_path, clip.seconds, clip.codes.shape[-1],
                 "; played first" if config.play_intro else "")

    def _follow_melody(self, path: str) -> None:
        """Melody models: every stride follows this clip's melody (lm/window.py: set_melody)."""
        audio = read_clip(path, self.sample_rate, self.channels, flag="--melody")
        self.generator.set_melody(torch.from_numpy(np.ascontiguousarray(audio.T)))
        self.log.info("melody: %s, %.1f s, looped over the stream; each stride follows the part under its window",
                 path, audio.shape[0] / self.sample_rate)

    @property
    def first_stride_seconds(self) -> float:
        """The ramp's first stride: as configured, else 1 s on CUDA and the full stride on CPU."""
        if self.config.first_stride_seconds is not None:
            return self.config.first_stride_seconds
        if self.generator.device.type == "cuda":
            return min(1.0, self.config.stride_seconds)
        return self.config.stride_seconds

    # -- running --------------------------------------------------------------------------------
    def play(self, clock: Clock, stop: threading.Event, poll_seconds: float = 0.1) -> None:
        """Generate in the calling thread and play from `clock` until `stop` is set, the
        duration has been played or generation fails (`producer.error`).

        Call it from the process's main thread: OpenMP's workers spin-wait only for the initial
        thread; for any other thread on 2 cores every small parallel op pays a futex wake-up
        (measured: 46 instead of 22 ms per decode step). (A batched station runs its strides in
        the batcher's thread, the main one; this one then only waits and decodes.) The playback
        side (pre-fill wait, then the clock) is supervised from a thread of its own."""
        self.clock = clock
        self.metrics.started_at = time.monotonic()
        supervisor = threading.Thread(target=self._supervise, args=(clock, stop, poll_seconds),
                                      name="station", daemon=True)
        supervisor.start()
        try:
            self.producer.run()
            while supervisor.is_alive():  # the last stride is written: play it out
                supervisor.join(timeout=0.2)
        finally:
            stop.set()
            supervisor.join(timeout=30)
        status = self.status()
        self.log.info("played %.1f s of audio; %d strides, %d underruns, first sound after %s s",
                 status["played_seconds"], status["strides"], status["underruns"],
                 status["first_sound_seconds"])
        if self.state_store is not None and self.state_store.saves:
            self.log.info("state: saved in %s at stride %d; start again with the same --state-dir to go on",
                     self.state_store.path, self.generator.stride_index)

    def _supervise(self, clock: Clock, stop: threading.Event, poll_seconds: float) -> None:
        """Pre-fill, then play until stopped, finished or failed; then stop the producer."""
        try:
            if self.wait_for_prefill(stop):
                clock.start()
                while not stop.is_set() and not self.finished and self.producer.error is None:
                    stop.wait(poll_seconds)
                    self._note_heard_changes()
        finally:
            if stop.is_set():
                self.log.info("stopping: finishing the outputs")
            clock.stop()
            self.producer.stop()
            self.program_ring.closed = True  # the outputs drain what was played and finish

    def add_heard_listener(self, listener: tp.Callable[[tp.Any, int], None]) -> None:
        """`listener(change, program_sample)` for every change once it is heard (the supervisor
        thread calls it; `program_sample`: where it starts in what was played, underrun
        silence included, as in a recording)."""
        self._heard_listeners.append(listener)

    def add_output(self, name: str, health: tp.Callable[[], dict]) -> None:
        """An output (recording, encoder, Icecast mount) whose `health()` /status reports."""
        self._outputs[name] = health

    def _note_heard_changes(self) -> None:
        """Measure each command's latency once the playhead reaches it; tell the listeners."""
        player = self.player
        for change in self.steering.note_heard(player.playhead, self.sample_rate):
            if change.latency_seconds is not None:
                self.metrics.change_latency.observe(change.latency_seconds)
                self.metrics.last_change_latency_seconds = round(change.latency_seconds, 3)
                self.log.info("control: change %d heard %.2f s after the command", change.number,
                         change.latency_seconds)
            program_sample = max(0, player.played_samples - (player.playhead - change.heard_from_sample))
            for listener in self._heard_listeners:
                try:
                    listener(change, program_sample)
                except Exception as err:  # noqa: BLE001 - e.g. a full disk for the sidecar: playback goes on
                    self.log.error("a listener of heard changes failed (%s: %s); playback goes on",
                              type(err).__name__, err)

    def _prefill_target_samples(self) -> int:
        target = max(1, int(self.config.prefill_seconds * self.sample_rate))
        return target if self.end_sample is None else min(target, self.end_sample)

    def wait_for_prefill(self, stop: threading.Event, poll_seconds: float = 0.05) -> bool:
        """Block until enough audio is buffered to start playing. False if stopped or failed."""
        target = self._prefill_target_samples()
        self.log.info("pre-fill: generating the first %.1f s before playback starts",
                 max(target / self.sample_rate, self.first_stride_seconds))
        while not stop.is_set():
            written = self.stream_ring.written_until
            if written >= target or (written and self.producer.waiting_for_room) or self.producer.done.is_set():
                break
            stop.wait(poll_seconds)
        if stop.is_set() or self.producer.error is not None or self.stream_ring.written_until == 0:
            return False
        self.metrics.first_sound_seconds = round(time.monotonic() - self.metrics.started_at, 3)
        rtf = self.metrics.last_real_time_factor
        self.log.info("pre-fill: done in %.1f s, %.1f s buffered; playback starts", self.metrics.first_sound_seconds,
                 self.buffered_samples / self.sample_rate)
        if rtf is not None and rtf < 1.0:
            self.log.warning("generation runs at %.2fx real time: playback will pause in silence while "
                        "it catches up; --prefill (with a larger --buffer-ahead) buffers more first",
                        rtf)
        return True

    # -- figures -------------------------------------------------------------------------------
    def control_status(self) -> dict:
        """What is playing at the playhead and what comes next (Steering.status)."""
        return self.steering.status(self.player.playhead, self.producer.next_stride_sample,
                                    self.sample_rate, self.stitcher.hop_samples)

    def now_playing(self) -> str:
        """The prompt(s) heard at the playhead, as one line (where a morph is going: the title)."""
        return self.control_status()["playing"]["title"]

    @property
    def buffered_samples(self) -> int:
        """Generated stream samples ahead of the playhead."""
        return max(0, self.stream_ring.written_until - self.player.playhead)

    def status(self) -> dict:
        """The station's figures now, read from the parts that own them (the metrics record,
        the player, the ring readers, the clock); nothing is written here."""
        sr, player = self.sample_rate, self.player
        status = self.metrics.snapshot()
        control = self.control_status()
        status.update(
            prompt=control["playing"]["prompt"],
            control=control,
            channels=self.channels,
            buffered_seconds=round(self.buffered_samples / sr, 3),
            played_seconds=round(player.playhead / sr, 3),
            underruns=player.underruns,
            failing_seconds=round(self.producer.failures.failing_seconds, 3),
            failed=self.producer.error is not None,
            underrun_seconds=round(player.underrun_samples / sr, 3),
            reader_overruns=self.program_ring.reader_overruns,
            output_underflows=self.clock.underflows if self.clock is not None else 0,
            outputs={name: health() for name, health in list(self._outputs.items())},
            resumed=None if self.resumed is None else {
                "strides": self.resumed.stride_index, "stream_seconds": self.resumed.stream_seconds,
                "saved_at": self.resumed.saved_at},
        )
        return status

    @property
    def finished(self) -> bool:
        """Everything there is to play has been played."""
        return self.player.finished
