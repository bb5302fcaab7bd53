"""Pooling of hidden states into one vector per sequence: the one implementation for finetuning heads,
``bioseq embed`` and the linear probe.

Shapes: hidden ``[B, L, H]``; ``attention_mask`` ``Bool[B, L]`` (True = real token, right padding);
pooled ``[B, H]``.

Modes:
  * ``mean``  -- average over the selected positions (default: the real tokens);
  * ``max``   -- element-wise max over the selected positions;
  * ``first`` -- position 0 (a prepended [CLS] when the data adds one);
  * ``last``  -- the last real token (for a causal backbone the only position that has seen the whole
    sequence; with an appended [SEP] that token).

``select`` (``Bool[B, L]``) restricts ``mean``/``max`` to a subset of the real tokens, e.g. the residue
positions when [CLS]/[SEP] specials are model input but not sequence (``bioseq embed``). Padding never
enters a result. :class:`PoolAccumulator` computes the same poolings for a sequence fed in pieces
(long-sequence chunking and streaming), in O(H) memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

POOLS = ("mean", "max", "first", "last")


def check_pools(pools: Sequence[str]) -> None:
    bad = [p for p in pools if p not in POOLS]
    if bad:
        raise ValueError(f"unknown pooling {bad} (choose from {', '.join(POOLS)})")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, mode: str = "mean", *,
         select: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``hidden [B, L, H]`` -> ``[B, H]`` (see the module docstring for the modes)."""
    check_pools([mode])
    B, L, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, L, dtype=torch.bool, device=hidden.device)
    mask = attention_mask.to(torch.bool)
    if mode == "first":
        return hidden[:, 0]
    if mode == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(B, device=hidden.device), last]
    chosen = mask if select is None else (mask & select.to(torch.bool))
    if mode == "max":
        return hidden.masked_fill(~chosen[..., None], torch.finfo(hidden.dtype).min).amax(1)
    m = chosen[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def pool_all(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pools: Sequence[str], *,
             select: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Several poolings of one batch: pool name -> ``[B, H]``."""
    return {p: pool(hidden, attention_mask, p, select=select) for p in pools}


class PoolAccumulator:
    """The poolings of one sequence fed in pieces, in O(H) memory (sums in float64).

    ``update(h[n, H], first_pos, select_lo, select_hi, total)``: ``h`` holds token positions
    ``first_pos .. first_pos + n`` of a sequence of ``total`` tokens; ``mean``/``max`` run over the
    positions ``[select_lo, select_hi)``, ``first``/``last`` are positions 0 and ``total - 1``.
    """

    def __init__(self, pools: Sequence[str], dim: int):
        check_pools(pools)
        self.pools = tuple(pools)
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.max = torch.full((dim,), float("-inf"))
        self.count = 0
        self.first: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def update(self, h: torch.Tensor, first_pos: int, select_lo: int, select_hi: int, total: int) -> None:
        h = h.float().cpu()
        n = h.shape[0]
        if first_pos == 0 and n:
            self.first = h[0].clone()
        if first_pos + n == total and n:
            self.last = h[-1].clone()
        lo, hi = max(select_lo - first_pos, 0), min(select_hi - first_pos, n)
        if hi > lo:
            part = h[lo:hi]
            self.sum += part.sum(0, dtype=torch.float64)
            self.max = torch.maximum(self.max, part.max(0).values)
            self.count += hi - lo

    def result(self) -> dict[str, np.ndarray]:
        out = {}
        for p in self.pools:
            if p == "mean":
                out[p] = (self.sum / max(self.count, 1)).float().numpy()
            elif p == "max":
                out[p] = self.max.numpy().copy()
            else:
                out[p] = getattr(self, p).numpy()
        return out
