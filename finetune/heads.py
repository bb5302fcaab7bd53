"""Pooling and prediction heads for sequence-level tasks on top of any backbone of the contract.

Shapes: hidden ``[B, L, D]``, attention_mask ``Bool[B, L]`` (True = real token, right padding), pooled
``[B, D]``, logits ``[B, num_outputs]``.

Pooling (``mean``, ``max``, ``first``, ``last``; padding never enters) is ``bioseq.pooling.pool``, the
same function ``bioseq embed`` and the probe use.

RC-averaging ("post-hoc conjoining", Zhou et al. 2021; used by Caduceus): logits are averaged over the
sequence and its reverse complement, so the prediction is strand-invariant by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from bioseq.pooling import POOLS, pool

POOLING = POOLS


class PredictionHead(nn.Module):
    """Pool + (dropout) + linear, or a small MLP ``Linear(D, H) -> GELU -> Dropout -> Linear(H, out)``.

    ``num_outputs`` = number of classes (classification) or targets (regression).
    """

    def __init__(
        self,
        d_model: int,
        num_outputs: int,
        pooling: str = "mean",
        head: str = "linear",
        hidden_size: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLING)})")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        if head == "linear":
            self.net = nn.Linear(d_model, num_outputs)
        elif head == "mlp":
            hidden_size = hidden_size or d_model
            self.net = nn.Sequential(
                nn.Linear(d_model, hidden_size),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_size, num_outputs),
            )
        else:
            raise ValueError(f"unknown head '{head}' (choose linear or mlp)")

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.dropout(pool(hidden, attention_mask, self.pooling)))


class SequenceModel(nn.Module):
    """Backbone + head: ``(input_ids[B, L], attention_mask[B, L]) -> logits [B, num_outputs]``.

    With ``rc_average=True`` (DNA only) the logits are the mean of the logits of each sequence and of its
    reverse complement, made with ``tokenizer.reverse_complement_padded`` so each row is flipped within
    its own length (padding stays on the right). ``rc_average="eval"`` averages only in eval mode
    (validation, test, prediction): Caduceus' post-hoc conjoining, trained on one strand at a time
    (with reverse-complement augmentation) at half the cost of a training step on both.
    """

    def __init__(self, backbone: nn.Module, head: PredictionHead, rc_average: bool | str = False,
                 tokenizer=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        if rc_average not in (False, True, "eval"):
            raise ValueError(f"rc_average must be False, True or 'eval', got {rc_average!r}")
        self.rc_average = rc_average
        if rc_average and (tokenizer is None or not hasattr(tokenizer, "reverse_complement_padded")):
            raise ValueError("rc_average needs a DNA tokenizer with reverse_complement_padded")
        self.tokenizer = tokenizer

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask=attention_mask)
        return self.head(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self._logits(input_ids, attention_mask)
        if not self.rc_average or (self.rc_average == "eval" and self.training):
            return logits
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        rc_ids = self.tokenizer.reverse_complement_padded(input_ids, attention_mask)
        return 0.5 * (logits + self._logits(rc_ids, attention_mask))
