"""The text condition as the decoder reads it: cross-attention keys and values of every layer,
[layers, 2 (cond, uncond), H, Tc, Dh], computed once per prompt set.

Weighted prompts are mixed here, in the cross-attention inputs: the conditional row is
Σ wᵢ · (keys, values of prompt i), with Σ wᵢ = 1 (the projection is linear, so this is the
projection of the weighted mix of the prompts' text embeddings, padded to one length). The batch
stays 2 whatever the number of prompts, so a step costs the same, the CPU kernels and the CUDA
graph are unchanged, and a morph is one small in-place mix per step (`mix`) with the weights as a
device tensor. (Guidance over one row per prompt would multiply the KV cache, as many bytes per
step as the weights on CPU, by up to 4.5.) One prompt of weight 1 takes exactly the unweighted
path.
"""
from __future__ import annotations

import typing as tp

import torch


class CrossConditions:
    """`keys`/`values` [L, 2, H, Tc, Dh] (`keys[i]` is layer i's [2, H, Tc, Dh]), replaced only
    when the shape changes (`set` returns True then: a captured CUDA graph must be captured
    again), else written in place."""

    def __init__(self, lm, layers, heads: int, head_dim: int, dtype: torch.dtype):
        self.lm = lm
        self.layers = layers
        self.heads = heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.keys: tp.Optional[torch.Tensor] = None
        self.values: tp.Optional[torch.Tensor] = None
        self._key: tp.Optional[str] = None
        self._bank: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]] = None  # [n, L, H, Tc, Dh] each
        self._weights: tp.Optional[tp.Tuple[float, ...]] = None
        #: Rows whose keys and values are all zero at every layer (the unconditional row of
        #: MusicGen's checkpoints): their cross-attention output is zero (model._cross_attention).
        self.silent_rows: tp.Tuple[int, ...] = ()

    @property
    def key(self) -> tp.Optional[str]:
        """Which prompt set is held (None: none yet); a new set gets a new key."""
        return self._key

    @property
    def bank(self) -> tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]]:
        """Each prompt's own keys and values [n, L, H, Tc, Dh] (the conditional row mixes them)."""
        return self._bank

    def set(self, attributes: tp.Sequence, weights: tp.Optional[tp.Sequence[float]] = None) -> bool:
        """The prompts `attributes` (audiocraft ConditioningAttributes, one or more) mixed with
        `weights` (summing to 1; one prompt: None). Recomputed only when the prompts change."""
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
        key = repr(list(attributes))
        replaced = False
        if key != self._key:
            lm = self.lm
            conditions = list(attributes) + ClassifierFreeGuidanceDropout(p=1.0)([attributes[0]])
            tensors = lm.condition_provider(lm.condition_provider.tokenize(conditions))
            sources = [cond for name, (cond, _mask) in tensors.items()
                       if name in lm.fuser.cond2fuse and lm.fuser.cond2fuse[name] == "cross"]
            src = torch.cat(sources, dim=1).to(self.dtype)  # [n + 1, Tc, D]: the prompts, then uncond
            rows = src.shape[0]
            keys, values = [], []
            for layer in self.layers:
                kv = layer.kv_cross(src)  # [n + 1, Tc, 2D]
                k, v = kv.view(rows, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                keys.append(k)
                values.append(v)
            keys, values = torch.stack(keys), torch.stack(values)  # [L, n + 1, H, Tc, Dh]
            self._bank = (keys[:, :-1].transpose(0, 1).contiguous(), values[:, :-1].transpose(0, 1).contiguous())
            replaced = self._store(keys[:, [0, rows - 1]], values[:, [0, rows - 1]])
            self._key, self._weights = key, None
        if len(attributes) > 1:
            self.mix(weights)
        return replaced

    def _store(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        self.silent_rows = tuple(r for r in range(keys.shape[1])
                                 if not bool(keys[:, r].any()) and not bool(values[:, r].any()))
        if self.keys is not None and self.keys.shape == keys.shape:
            self.keys.copy_(keys)  # in place: a captured CUDA graph reads these tensors
            self.values.copy_(values)
            return False
        self.keys, self.values = keys.contiguous(), values.contiguous()
        return True

    def mix(self, weights: tp.Sequence[float]) -> None:
        """Write Σ wᵢ · prompt i into the conditional row (in place; nothing when unchanged)."""
        weights = tuple(float(w) for w in weights)
        if weights == self._weights:
            return
        bank_k, bank_v = self._bank
        if len(weights) != bank_k.shape[0]:
            raise ValueError(f"{len(weights)} weights for {bank_k.shape[0]} prompts")
        w = torch.tensor(weights, dtype=bank_k.dtype, device=bank_k.device).view(-1, 1, 1, 1, 1)
        self.keys[:, 0].copy_((w * bank_k).sum(0))
        self.values[:, 0].copy_((w * bank_v).sum(0))
        self.silent_rows = tuple(r for r in self.silent_rows if r != 0)  # (a mix is not taken as silent)
        self._weights = weights
