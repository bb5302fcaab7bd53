"""Right padding and within-length flips: the helpers every bidirectional or reverse-complement backbone
shares (Caduceus, bidirectional and RCPS xLSTM) and the recurrent ones use to find each row's end.

Batches are right-padded (DESIGN.md): row b holds ``lengths[b]`` real tokens, then padding. A
bidirectional pass must reverse each row within its own length, so the padding stays on the right and
never reaches a real token of the reversed pass.
"""

from __future__ import annotations

import torch

from bioseq.errors import BioseqError


def right_padded_lengths(attention_mask: torch.Tensor | None, L: int) -> torch.Tensor | None:
    """Row lengths ``[B]`` of a right-padded mask ``[B, L]``; None when nothing is padded. A mask that is
    not right padding (a run of True, then False, in every row) is a one-line BioseqError."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(L, device=mask.device) < lengths[:, None]):
        raise BioseqError("attention_mask must be right padding (each row: real tokens, then padding)")
    return lengths


def flip_index(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """``[B, L]`` gather index that reverses positions ``0..lengths[b]-1`` of each row, padding in place."""
    pos = torch.arange(L, device=lengths.device)
    return torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)


def flip_within(x: torch.Tensor, lengths: torch.Tensor | None,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse ``x [B, L, ...]`` along L within each row's length (a plain flip when ``lengths`` is
    None); ``index`` is a precomputed :func:`flip_index` for repeated flips of one batch."""
    if lengths is None:
        return x.flip(1)
    if index is None:
        index = flip_index(lengths, x.shape[1])
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))
