"""Weight-decay groups and the warmup + cosine schedule of models/optim.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bioseq.models.optim import build_optimizer, cosine_with_warmup, param_groups, resolve_warmup


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.conv = nn.Conv1d(8, 8, 3, groups=8)
        self.A_log = nn.Parameter(torch.zeros(8, 4))
        self.D = nn.Parameter(torch.ones(8))
        self.filt = nn.Parameter(torch.randn(8, 8))
        self.filt._no_weight_decay = True
        self.special = nn.Parameter(torch.randn(8, 8))
        self.special._optim = {"lr": 1e-3, "weight_decay": 0.0}
        self.frozen = nn.Parameter(torch.randn(8, 8), requires_grad=False)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight  # tied: must appear once


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_param_groups_split():
    model = Toy()
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    assert _names(model, groups["decay"]) == ["conv.weight", "proj.weight"]
    assert groups["decay"]["weight_decay"] == 0.1
    assert _names(model, groups["no_decay"]) == ["A_log", "D", "conv.bias", "embed.weight", "filt",
                                                 "norm.bias", "norm.weight", "proj.bias"]
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert _names(model, groups["special0"]) == ["special"]
    assert groups["special0"]["lr"] == 1e-3
    every = [p for g in groups.values() for p in g["params"]]
    assert len(every) == len({id(p) for p in every})  # tied embedding counted once
    assert all(p.requires_grad for p in every)  # frozen left out


def test_schedule_shape():
    warmup, total, floor = 10, 110, 0.1
    values = [cosine_with_warmup(s, warmup, total, floor) for s in range(130)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values[:9], values[1:10]))  # linear ramp
    assert all(b <= a + 1e-12 for a, b in zip(values[10:110], values[11:111]))  # cosine decay
    assert values[60] == pytest.approx(floor + (1 - floor) * 0.5)  # half-way
    assert values[110] == pytest.approx(floor) and values[129] == pytest.approx(floor)
    assert resolve_warmup(0.01, 1000) == 10 and resolve_warmup(25, 1000) == 25
    assert cosine_with_warmup(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_build_optimizer_steps_lr():
    model = Toy()
    opt, sched = build_optimizer(model, lr=1e-2, weight_decay=0.1, warmup_steps=2, total_steps=6,
                                 min_lr_ratio=0.0)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-3) and lrs[1] == pytest.approx(1e-2)
    assert lrs[2] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(0)))
    assert lrs[6] == pytest.approx(0.0, abs=1e-12)
    special = [g for g in opt.param_groups if g["name"] == "special0"][0]
    assert special["weight_decay"] == 0.0
    with pytest.raises(ValueError):
        build_optimizer(model, lr=0.0)
