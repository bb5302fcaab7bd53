"""Sampling from a causal backbone with a recurrent state: the engine behind ``bioseq generate``.

For one prompt (token ids [P], P >= 1) and N samples::

    hidden, state = backbone(prompt[None], state=backbone.allocate_state(1))     # chunked prefill
    logits = backbone.lm_logits(hidden[:, -1])                                   # [1, rows]
    state  = the prompt's state repeated to the batch (rows of dim 0)
    repeat max_new_tokens times:
        token  = sample(logits)                                                  # [B]
        hidden, state = backbone.step(token, state)                              # one token per row
        logits = backbone.lm_logits(hidden)

so memory does not grow with the generated length: the state has a fixed size (Mamba: conv window and
SSM state per layer; xLSTM: conv window, cell ``C, n, m`` and the position), and only the sampled ids
are kept. Rows that have stopped are dropped from the batch.

Sampling a token from ``logits`` [B, rows] (float32):

1. only the tokenizer's real vocabulary counts: columns ``vocab_size..rows`` (embedding padding) are cut
   off, and the special tokens ([CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK]) are masked out, except
   EOS (``[SEP]``) when ``stop_at_eos`` is set (a sampled EOS ends that sample; it is not part of it);
2. ``temperature``: logits / T (T = 0: greedy, the argmax);
3. ``top_k`` > 0: only the k largest logits stay;
4. ``top_p`` < 1: only the nucleus stays: the most probable tokens whose cumulative probability first
   reaches ``top_p`` (at least one token);
5. one draw from the softmax of what is left (``torch.multinomial`` with a seeded generator).

Determinism: one ``torch.Generator`` seeded with ``seed`` draws every sample in order, so the same seed,
model, prompts, N, batch size and device give the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils import _pytree as pytree

from bioseq.errors import BioseqError
from bioseq.tokenizers import NUM_SPECIAL

__all__ = ["GenerateError", "SamplingOptions", "Sample", "check_generative", "allowed_tokens",
           "filter_logits", "sample_next", "generate_ids", "generate"]


class GenerateError(BioseqError):
    """A model or option that cannot generate; the message is one line."""


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample (see the module docstring).

    ``max_new_tokens``: tokens generated per sample at most; ``temperature`` >= 0 (0 = greedy);
    ``top_k`` >= 0 (0 = off); ``top_p`` in (0, 1] (1 = off); ``stop_at_eos``: EOS may be sampled and
    ends the sample (otherwise it is never sampled and every sample has ``max_new_tokens`` tokens);
    ``batch_size``: rows decoded together.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_at_eos: bool = False
    batch_size: int = 256

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise GenerateError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerateError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise GenerateError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Sample:
    """One generated sample: the new token ids (prompt and EOS excluded) and whether EOS ended it."""

    prompt_index: int
    sample_index: int
    ids: np.ndarray
    stopped: bool


# --------------------------------------------------------------------------------------------------
# What can generate
# --------------------------------------------------------------------------------------------------


def check_generative(backbone, families: str = "") -> None:
    """Raise :class:`GenerateError` unless ``backbone`` is causal and carries a recurrent state.
    ``families`` (e.g. ``"mamba, xlstm"``) names the families that can generate, for the message."""
    arch = getattr(getattr(backbone, "config", None), "arch", type(backbone).__name__)
    if not getattr(backbone, "causal", False):
        raise GenerateError(f"this '{arch}' backbone is not causal (bidirectional or reverse-complement: "
                            "every position sees the whole sequence), so it cannot generate left to right; "
                            "use a causal model of a family with a recurrent state"
                            + (f" ({families})" if families else ""))
    if not getattr(backbone, "supports_state", False):
        raise GenerateError(f"this '{arch}' backbone has no recurrent state (each new token would need a "
                            "forward over the whole sequence), so bioseq generate cannot sample from it; "
                            "families that can generate: "
                            + (f"{families} (causal configs)" if families else "those with a recurrent "
                               "state"))


# --------------------------------------------------------------------------------------------------
# One sampling step
# --------------------------------------------------------------------------------------------------


def allowed_tokens(vocab_size: int, eos_id: int, allow_eos: bool, device=None,
                   special_ids: list[int] | None = None) -> torch.Tensor:
    """BoolTensor[vocab_size]: the symbol ids, plus ``eos_id`` when ``allow_eos``. ``special_ids`` are
    the tokenizer's specials (default: the shared layout's first ``NUM_SPECIAL`` ids)."""
    specials = list(range(NUM_SPECIAL)) if special_ids is None else [i for i in special_ids if i < vocab_size]
    if vocab_size <= len(specials):
        raise GenerateError(f"the tokenizer has {vocab_size} tokens, none of them a symbol")
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[specials] = False
    if allow_eos:
        allowed[eos_id] = True
    return allowed


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Steps 1-4 of the module docstring: ``logits [B, rows]`` -> float32 ``[B, V]`` (V = len(allowed)),
    ``-inf`` where a token cannot be drawn. ``temperature`` 0 is treated as 1 here (the caller takes the
    argmax)."""
    V = allowed.shape[0]
    if logits.shape[-1] < V:
        raise GenerateError(f"the model has {logits.shape[-1]} output columns, the tokenizer {V} tokens")
    x = logits[..., :V].float()
    x = x.masked_fill(~allowed, float("-inf"))
    if temperature > 0:
        x = x / temperature
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1)
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, kth.indices, True)
        x = x.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        probs, order = torch.softmax(x, dim=-1).sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs                     # mass of the more probable tokens
        drop_sorted = before >= top_p                         # the first token always stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample_next(logits: torch.Tensor, allowed: torch.Tensor, options: SamplingOptions,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: ``logits [B, rows]`` -> LongTensor[B]."""
    x = filter_logits(logits, allowed, options.temperature, options.top_k, options.top_p)
    if options.temperature == 0:
        return x.argmax(-1)
    return torch.multinomial(torch.softmax(x, dim=-1), 1, generator=generator)[:, 0]


# --------------------------------------------------------------------------------------------------
# The state as a batch: every tensor leaf has the rows on dim 0
# --------------------------------------------------------------------------------------------------


def _leaves(state) -> list:
    return pytree.tree_flatten(state)[0]


def _rows_on_dim0(backbone, device) -> bool:
    """Whether every tensor of the backbone's state has the batch on dim 0 (compared at 1 and 2 rows)."""
    one, two = _leaves(backbone.allocate_state(1, device)), _leaves(backbone.allocate_state(2, device))
    if len(one) != len(two):
        return False
    for a, b in zip(one, two):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return False
        if isinstance(a, torch.Tensor) and (a.dim() == 0 or a.shape[0] != 1 or b.shape[0] != 2
                                            or a.shape[1:] != b.shape[1:]):
            return False
    return True


def _map_rows(state, fn: Callable[[torch.Tensor], torch.Tensor]):
    return pytree.tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) else t, state)


def state_numel(state) -> int:
    """Elements held by a state (all its tensors)."""
    return sum(t.numel() for t in _leaves(state) if isinstance(t, torch.Tensor))


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_ids(backbone, prompt: torch.Tensor, num_samples: int, options: SamplingOptions,
                 allowed: torch.Tensor, eos_id: int, generator: torch.Generator | None = None,
                 on_step: Callable[[int], None] | None = None, rows_on_dim0: bool | None = None,
                 ) -> list[tuple[np.ndarray, bool]]:
    """``num_samples`` continuations of one prompt (LongTensor[P], P >= 1, on the model's device), decoded
    together: ``[(new ids int64[n <= max_new_tokens], stopped at EOS), ...]``. ``on_step(n)`` is called
    after each step with the number of tokens drawn (EOS included); rows that have stopped are fed EOS
    (and their output ignored) only when the state's rows cannot be dropped."""
    check_generative(backbone)
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise GenerateError("a prompt must be a non-empty 1-D sequence of token ids")
    device = prompt.device
    if rows_on_dim0 is None:
        rows_on_dim0 = _rows_on_dim0(backbone, device)
    B = num_samples
    if rows_on_dim0:   # prefill once, then repeat the state's rows
        hidden, state = backbone(prompt[None], state=backbone.allocate_state(1, device))
        state = _map_rows(state, lambda t: t.expand(B, *t.shape[1:]).contiguous())
        logits = backbone.lm_logits(hidden[:, -1]).expand(B, -1)
    else:              # unknown state layout: prefill every row
        hidden, state = backbone(prompt[None].expand(B, -1), state=backbone.allocate_state(B, device))
        logits = backbone.lm_logits(hidden[:, -1])
    out = torch.empty(B, options.max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.full((B,), options.max_new_tokens, dtype=torch.long, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    live = torch.arange(B, device=device)          # original row of each running row
    for t in range(options.max_new_tokens):
        token = sample_next(logits, allowed, options, generator)
        out[live, t] = token
        drawn = token.numel()
        if options.stop_at_eos:
            ended = token == eos_id
            if bool(ended.any()):
                lengths[live[ended]] = t
                stopped[live[ended]] = True
                keep = ~ended
                live, token = live[keep], token[keep]
                if rows_on_dim0:
                    state = _map_rows(state, lambda s, k=keep: s[k])
        if on_step is not None:
            on_step(drawn)
        if live.numel() == 0 or t == options.max_new_tokens - 1:
            break
        if rows_on_dim0 or not options.stop_at_eos:
            hidden, state = backbone.step(token, state)
        else:
            full = torch.full((B,), eos_id, dtype=torch.long, device=device)
            full[live] = token
            hidden, state = backbone.step(full, state)
            hidden = hidden[live]
        logits = backbone.lm_logits(hidden)
    out, lengths, stopped = out.cpu().numpy(), lengths.cpu().numpy(), stopped.cpu().numpy()
    return [(out[i, :lengths[i]].copy(), bool(stopped[i])) for i in range(B)]


def generate(backbone, tokenizer, prompts: Sequence[np.ndarray | Sequence[int]], num_samples: int,
             options: SamplingOptions, seed: int = 0, device: str | torch.device | None = None,
             progress: Callable[[int], None] | None = None) -> Iterator[Sample]:
    """Samples for every prompt, in order (prompt 0's samples 0..N-1, then prompt 1's, ...).

    ``prompts``: token ids per prompt (each non-empty; e.g. ``[CLS]`` + encoded text); ``progress(n)``
    is called after each step with the number of tokens drawn (a sample draws ``len(ids) + stopped``).
    The backbone is put in eval mode.
    """
    check_generative(backbone)
    if num_samples < 1:
        raise GenerateError(f"the number of samples must be >= 1, got {num_samples}")
    vocab = int(tokenizer.vocab_size)
    if vocab > int(backbone.vocab_size):
        raise GenerateError(f"the tokenizer has {vocab} tokens but the model only {backbone.vocab_size} "
                            "embedding rows: it is not this model's tokenizer")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    backbone.eval()
    allowed = allowed_tokens(vocab, tokenizer.eos_id, options.stop_at_eos, device, tokenizer.special_ids)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    rows_on_dim0 = _rows_on_dim0(backbone, device)
    for p, ids in enumerate(prompts):
        prompt = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
        if prompt.numel() == 0:
            raise GenerateError(f"prompt {p + 1} is empty")
        if int(prompt.max()) >= vocab or int(prompt.min()) < 0:
            raise GenerateError(f"prompt {p + 1} holds token ids outside the tokenizer's 0..{vocab - 1}")
        for start in range(0, num_samples, options.batch_size):
            n = min(options.batch_size, num_samples - start)
            rows = generate_ids(backbone, prompt, n, options, allowed, tokenizer.eos_id, generator,
                                on_step=progress, rows_on_dim0=rows_on_dim0)
            for j, (new, stopped) in enumerate(rows):
                yield Sample(p, start + j, new, stopped)
