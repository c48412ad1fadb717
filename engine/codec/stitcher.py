"""Seam-free decoding of codes that arrive one stride at a time.

MusicGen's 32 kHz EnCodec decoder is: quantizer lookup → non-causal conv → 2-layer LSTM →
non-causal conv stack (upsampling ×640). Decoding each stride on its own restarts the LSTM and pads
the convolutions at the seam: audible clicks. The `StitchingDecoder` instead decodes the stream
exactly as one decode of the whole token sequence would:

* the convolution before the LSTM sees `pre_left` frames of past codes and waits for `pre_right`
  frames of future codes;
* the LSTM runs once over every frame, carrying its (h, c) state across strides;
* the convolution stack after the LSTM is decoded over a window with `post_left` frames of past
  LSTM output and emits only samples whose receptive field is complete, holding back
  `post_right` frames until the next stride arrives (its last upsampling stage over short time
  tiles, tiling.py).

The receptive fields are measured on the actual decoder when the stitcher is built, so any
checkpoint of this architecture (and its stereo variant) works. Memory stays bounded: only the
frames still needed as context are kept.
"""
from __future__ import annotations

import typing as tp

import numpy as np
import torch
from torch import nn

from .tiling import TimeTiledStack, context_frames, receptive_offsets

#: The convolution stack after the LSTM decodes at most this many frames at a time (each with its
#: receptive field's frames of context on both sides, a few % more work): its tensors at 32 kHz
#: stay under 16 MB, which the allocator reuses, where a whole 10 s stride's (up to 82 MB) are
#: mapped and faulted in anew each time (measured on 2 cores: a 10 s stride's decode 1.6 → 1.0 s;
#: 50 or 200 frames at a time: 1.1, 1.3 s).
POST_CHUNK_FRAMES = 100


class StitchingDecoder:
    """Codes in, PCM out, one stride at a time, equal to a one-shot decode of all the codes.

    `push(codes)` takes codes [B=1, K, frames] (K = the LM's codebooks; stereo models interleave)
    and returns PCM [samples, channels] float32 for every sample whose decode no longer depends on
    codes yet to come. `flush()` emits the held-back tail as if the stream ended there.
    """

    def __init__(self, compression_model):
        self.compression_model = compression_model
        self.stereo = hasattr(compression_model, "get_left_right_codes")
        codec = compression_model.model if self.stereo else compression_model
        self._codec = codec
        self.channels = int(compression_model.channels)
        self.hop_samples = int(codec.decoder.hop_length)
        layers = list(codec.decoder.model)
        lstm_at = [i for i, layer in enumerate(layers) if hasattr(layer, "lstm")]
        split = lstm_at[0] if lstm_at else 0
        self._pre = nn.Sequential(*layers[:split])
        self._lstm = layers[split] if lstm_at else None
        self.device = next(codec.parameters()).device
        dim = codec.decoder.dimension
        post_channels = self._lstm.lstm.hidden_size if self._lstm is not None else dim
        post = layers[split + 1:] if lstm_at else layers
        # (over time tiles on CPU, whose caches the tiles fit; a GPU takes the whole chunk at once)
        self._post = (TimeTiledStack(post, post_channels, self.device) if self.device.type == "cpu"
                      else nn.Sequential(*post))
        with torch.inference_mode():
            if len(self._pre):
                lo, hi = receptive_offsets(self._pre, dim, 32, self.device)
            else:
                lo, hi = 0, 0
            self.pre_left_frames, self.pre_right_frames = max(hi, 0), max(-lo, 0)
            offsets = receptive_offsets(self._post, post_channels, 64, self.device)
        self.post_left_frames, self.post_right_frames = context_frames(offsets, self.hop_samples)
        self.reset()

    @property
    def holdback_frames(self) -> int:
        """Frames of codes received but not yet decodable to final audio."""
        return self.pre_right_frames + self.post_right_frames

    #: What `snapshot` keeps: every field that changes as codes are pushed. Tensors are replaced,
    #: never written in place, so a shallow copy is a true snapshot.
    _STATE_FIELDS = ("_codes", "_codes_start", "_codes_end", "_lstm_state", "_lstm_frames",
                     "_feats", "_feats_start", "emitted_samples")

    @property
    def frames_pushed(self) -> int:
        """Codes received so far (the stream's frame count)."""
        return self._codes_end

    def snapshot(self) -> tp.Dict[str, tp.Any]:
        """The decoder's state now; `restore` returns to it, so that codes pushed from here can
        be replaced by others (a cut-in) and the stream stays one one-shot decode."""
        return {name: getattr(self, name) for name in self._STATE_FIELDS}

    def restore(self, state: tp.Dict[str, tp.Any]) -> None:
        for name in self._STATE_FIELDS:
            setattr(self, name, state[name])

    def reset(self) -> None:
        """Forget the stream; the next push starts at sample 0."""
        self._codes: tp.Optional[torch.Tensor] = None  # [B, K, n] codes from frame `_codes_start`
        self._codes_start = 0
        self._codes_end = 0
        self._lstm_state: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]] = None
        self._lstm_frames = 0  # frames already through the LSTM
        self._feats: tp.Optional[torch.Tensor] = None  # [B, C, n] LSTM output from `_feats_start`
        self._feats_start = 0
        self.emitted_samples = 0

    def _latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, K, T] → latent [B', D, T] (B' = 2 for stereo: left, right)."""
        if self.stereo:
            left, right = self.compression_model.get_left_right_codes(codes)
            codes = torch.cat([left, right], dim=0)
        return self._codec.decode_latent(codes)

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """Append codes [1, K, frames]; return the PCM [samples, channels] now final."""
        codes = codes.to(self.device)
        self._codes = codes if self._codes is None else torch.cat([self._codes, codes], dim=-1)
        self._codes_end += codes.shape[-1]
        return self._advance(final=False)

    def flush(self) -> np.ndarray:
        """Emit the held-back tail, decoding the stream's end as a one-shot decode would."""
        return self._advance(final=True)

    @torch.inference_mode()
    def _advance(self, final: bool) -> np.ndarray:
        lstm_target = self._codes_end if final else self._codes_end - self.pre_right_frames
        if lstm_target > self._lstm_frames:
            window_start = max(self._codes_start, self._lstm_frames - self.pre_left_frames)
            latent = self._latent(self._codes[..., window_start - self._codes_start:])
            pre = self._pre(latent)[..., self._lstm_frames - window_start: lstm_target - window_start]
            feats = self._run_lstm(pre)
            self._feats = feats if self._feats is None else torch.cat([self._feats, feats], dim=-1)
            self._lstm_frames = lstm_target
        feats_end = self._lstm_frames
        emit_frame = self.emitted_samples // self.hop_samples
        emit_target = feats_end if final else feats_end - self.post_right_frames
        if self._feats is None or emit_target <= emit_frame:
            return np.zeros((0, self.channels), dtype=np.float32)
        hop = self.hop_samples
        pieces = []
        for first in range(emit_frame, emit_target, POST_CHUNK_FRAMES):
            last = min(emit_target, first + POST_CHUNK_FRAMES)
            window_start = max(self._feats_start, first - self.post_left_frames)
            window_end = min(feats_end, last + self.post_right_frames)
            audio = self._post(self._feats[..., window_start - self._feats_start:window_end - self._feats_start])
            pieces.append(audio[..., (first - window_start) * hop:(last - window_start) * hop])
        audio = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        self.emitted_samples = emit_target * hop
        self._trim(keep_codes_from=self._lstm_frames - self.pre_left_frames,
                   keep_feats_from=emit_target - self.post_left_frames)
        # [B', 1, S] (stereo: left and right in the batch) → [S, channels]
        return audio.reshape(-1, audio.shape[-1]).T.float().cpu().numpy().astype(np.float32, copy=False)

    def _run_lstm(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] → LSTM output with skip [B, C, T], state carried from the last call."""
        if self._lstm is None:
            return x
        seq = x.permute(2, 0, 1)
        out, self._lstm_state = self._lstm.lstm(seq, self._lstm_state)
        if self._lstm.skip:
            out = out + seq
        return out.permute(1, 2, 0)

    def _trim(self, keep_codes_from: int, keep_feats_from: int) -> None:
        cut = max(0, keep_codes_from - self._codes_start)
        if cut:
            self._codes = self._codes[..., cut:]
            self._codes_start += cut
        cut = max(0, keep_feats_from - self._feats_start)
        if cut and self._feats is not None:
            self._feats = self._feats[..., cut:]
            self._feats_start += cut
