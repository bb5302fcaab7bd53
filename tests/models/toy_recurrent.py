"""A deliberately simple recurrent backbone for the conformance suite: a gated linear recurrence.

It exercises the state paths of the contract (``allocate_state``, ``step``, ``forward(..., state=)``)
and ``bioseq embed --long stream`` independently of any real model family. One layer, on the
residual stream x [B, L, D]::

    u = LN(x);  a, b = sigmoid(W_a u), W_b u            # gate in (0, 1), input
    h_t = a_t * h_{t-1} + (1 - a_t) * b_t                # per channel, h_{-1} = state (0 at start)
    x = x + W_o h

The scan runs in chunks of ``chunk`` steps: inside a chunk ``h_t = exp(S_t) h_0 + sum_{s<=t}
exp(S_t - S_s) (1 - a_s) b_s`` with ``S`` the cumulative sum of ``log a`` (every exponent <= 0), so no
Python loop runs per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bioseq.models import Backbone, BackboneConfig, Family


@dataclass
class GatedRecurrenceConfig(BackboneConfig):
    arch: str = "toy-recurrent"
    d_model: int = 16
    n_layer: int = 2
    vocab_size: int = 12
    chunk: int = 64
    alphabet: str = "dna"
    tie_word_embeddings: bool = True


def chunked_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk: int) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + (1 - a_t) b_t`` for a, b [B, L, D], h0 [B, D] -> h [B, L, D]."""
    out = []
    h = h0
    for s in range(0, a.shape[1], chunk):
        ac, bc = a[:, s: s + chunk], b[:, s: s + chunk]
        T = ac.shape[1]
        cum = torch.log(ac).cumsum(1)                                   # [B, T, D]
        diff = cum[:, :, None, :] - cum[:, None, :, :]                  # [B, t, s, D]
        causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
        weights = torch.where(causal[None, :, :, None], diff, float("-inf")).exp()
        hc = torch.einsum("btsd,bsd->btd", weights, (1 - ac) * bc) + cum.exp() * h[:, None]
        out.append(hc)
        h = hc[:, -1]
    return torch.cat(out, 1)


class GatedLayer(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, d)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        return torch.sigmoid(a), b


class GatedRecurrence(Backbone):
    arch = "toy-recurrent"
    supports_state = True

    def __init__(self, config: GatedRecurrenceConfig):
        super().__init__(config)
        rows = -(-config.vocab_size // 8) * 8
        self.embed_tokens = nn.Embedding(rows, config.d_model)
        self.layers = nn.ModuleList(GatedLayer(config.d_model) for _ in range(config.n_layer))
        self.norm_f = nn.LayerNorm(config.d_model)
        self.make_lm_head(config.d_model, rows)

    def allocate_state(self, batch_size: int, device=None) -> list[torch.Tensor]:
        return [torch.zeros(batch_size, self.config.d_model, device=device) for _ in self.layers]

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False,
                state=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        start = state if state is not None else self.allocate_state(x.shape[0], x.device)
        states, new = [x], []
        for layer, h0 in zip(self.layers, start):
            a, b = layer.gates(x)
            h = chunked_scan(a, b, h0, self.config.chunk)
            new.append(h[:, -1])
            x = x + layer.out_proj(h)
            states.append(x)
        hidden = self.norm_f(x)
        out = (hidden, tuple(states)) if output_hidden_states else (hidden,)
        if state is not None:
            out = out + (new,)
        return out if len(out) > 1 else hidden

    def step(self, input_ids: torch.Tensor, state):
        x = self.embed_tokens(input_ids)
        new = []
        for layer, h in zip(self.layers, state):
            a, b = layer.gates(x)
            h = a * h + (1 - a) * b
            new.append(h)
            x = x + layer.out_proj(h)
        return self.norm_f(x), new


FAMILY = Family(arch="toy-recurrent", config=GatedRecurrenceConfig, module=GatedRecurrence)
