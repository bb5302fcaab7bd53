"""Optimizer and learning-rate schedule shared by pretraining (``models.lm``) and finetuning.

Weight decay follows the HyenaDNA/safari practice (``src/utils/optim_groups.py`` there): decay is
applied to the weight matrices of linear/convolution layers and is OFF for

* biases (any parameter whose name ends in ``bias``),
* normalisation layers (LayerNorm, RMSNorm, GroupNorm, BatchNorm, ... : any module whose class name
  contains ``Norm``),
* embedding tables (``nn.Embedding``; with a tied LM head this is also the output projection),
* SSM parameters named ``A_log`` or ``D`` (Mamba convention),
* any parameter a backbone marks with ``param._no_weight_decay = True`` (Hyena filter MLPs, modulation
  deltas, positional features, xLSTM gate biases ...).

A parameter may also carry ``param._optim = {"lr": ..., "weight_decay": ...}`` (the safari convention
for per-parameter hyperparameters); such parameters get their own group with those overrides.

The schedule is linear warmup from 0 to the peak learning rate over ``warmup_steps`` optimizer steps,
then a half cosine down to ``min_lr_ratio * lr`` at ``total_steps`` (HyenaDNA: ``lr_min = 0.1 * lr``,
warmup 1% of training), constant afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", "D")


def _no_decay(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    if getattr(param, "_no_weight_decay", False):
        return True
    if name.endswith("bias") or name in NO_DECAY_NAMES:
        return True
    if isinstance(module, nn.Embedding) or "Norm" in type(module).__name__:
        return True
    return param.ndim < 2  # remaining vectors/scalars (gains, scales) are never decayed


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into AdamW groups.

    Returns ``[{"params": decayed, "weight_decay": weight_decay, "name": "decay"},
    {"params": rest, "weight_decay": 0.0, "name": "no_decay"}, *special]`` where ``special`` groups hold
    parameters with an ``_optim`` dict (one group per distinct dict). Empty groups are dropped. Tied
    (shared) parameters appear once. Frozen parameters (``requires_grad=False``) are left out.
    """
    decay, no_decay, special = [], [], {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            overrides = getattr(param, "_optim", None)
            if overrides:
                special.setdefault(tuple(sorted(overrides.items())), []).append(param)
            elif _no_decay(module, name, param):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    for i, (items, params) in enumerate(special.items()):
        overrides = dict(items)
        overrides.setdefault("weight_decay", 0.0)
        groups.append({"params": params, "name": f"special{i}", **overrides})
    return [g for g in groups if g["params"]]


# The name in API.md; kept as an alias so both spellings work.
build_optimizer_groups = param_groups


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, then cosine from 1 to
    ``min_lr_ratio`` over the remaining ``total_steps - warmup_steps`` steps, then ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_warmup(warmup_steps: int | float, total_steps: int) -> int:
    """``warmup_steps`` as a step count: a float in (0, 1) is a fraction of ``total_steps``."""
    if isinstance(warmup_steps, float) and 0.0 < warmup_steps < 1.0:
        return max(1, int(round(warmup_steps * total_steps)))
    return max(0, int(warmup_steps))


def _split_by_scale(groups: list[dict], scales: dict[int, float], lr: float) -> list[dict]:
    out = []
    for g in groups:
        by_scale: dict[float, list] = {}
        for p in g["params"]:
            by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
        for scale, params in by_scale.items():
            ng = {k: v for k, v in g.items() if k != "params"}
            ng["params"] = params
            ng["lr"] = g.get("lr", lr) * scale
            out.append(ng)
    return out


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_steps: int | float = 0.01,
    total_steps: int = 10_000,
    min_lr_ratio: float = 0.1,
    lr_scales: dict[int, float] | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` plus a per-step cosine schedule with linear warmup.

    ``warmup_steps`` is a step count, or a fraction of ``total_steps`` when it is a float in (0, 1).
    ``lr_scales`` maps ``id(param)`` to a multiplier of the group's learning rate (layer-wise decay, a
    separate head lr); each group is split by multiplier. Call ``scheduler.step()`` after every
    optimizer step (Lightning: ``interval="step"``). The one optimizer builder of pretraining and
    finetuning.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    total_steps = max(1, int(total_steps))
    warmup = resolve_warmup(warmup_steps, total_steps)
    groups = param_groups(model, weight_decay)
    if lr_scales:
        groups = _split_by_scale(groups, lr_scales, lr)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup, total_steps, min_lr_ratio)
    )
    return optimizer, scheduler
