"""k-shot in-context classification with a language model (the HyenaDNA protocol), on any backbone.

Layout of one example (ids; ``T`` = the task length, every sequence left-padded with ``[PAD]`` to ``T``
tokens so that it ends right before its ``[SEP]``)::

    demo_1 [SEP] label_1 [SEP]  demo_2 [SEP] label_2 [SEP]  ...  query [SEP]          (causal backbone)
    ...                                                           query [SEP] [MASK] [SEP]  (bidirectional)

``label_i`` is the label token of the demonstration's class (``finetune.label_tokens``: DNA ``A``/``N`` for
two classes, ``A``/``G``/``N`` for three). A causal backbone answers with the next token after
``query [SEP]`` (the logits at the last position); a bidirectional masked-LM backbone answers at the
``[MASK]``. Either way the prediction is the argmax over the label tokens only.

Demonstrations: ``k`` per class drawn from the training pool without replacement, shuffled together,
from a generator seeded by ``(seed, query index)`` (so every query has its own, reproducible set;
``k = 0`` is the zero-shot answer). ``repeat = 2`` shows the whole demonstration block twice before the
query: the long-context literature reports that recurrent models recall a context better when they have
seen it twice (``repeat="auto"``: 2 for backbones with a recurrent state, else 1).

Instruction tuning (:func:`instruction_tune`): full finetuning of a copy of the backbone on ``n`` k-shot
formatted training examples (their demonstrations drawn from the rest of the pool), AdamW lr 1e-4, one
epoch, cross-entropy over the label-token logits at the answer position.

The backbone's ``max_length`` counts every token of the layout; a layout that does not fit is refused
with a message naming the shots, demonstrations and task length.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bioseq.errors import BioseqError
from bioseq.finetune.label_tokens import check_fits, restrict_logits


@dataclass(frozen=True)
class KShotFormat:
    """How k-shot examples are written out as ids (see the module docstring)."""

    task_length: int
    label_ids: tuple[int, ...]
    sep_id: int = 1
    pad_id: int = 4
    mask_id: int = 3
    causal: bool = True
    repeat: int = 1

    @classmethod
    def for_backbone(cls, backbone: nn.Module, tokenizer, label_ids: Sequence[int], task_length: int,
                     repeat: int | str = 1) -> KShotFormat:
        return cls(int(task_length), tuple(int(i) for i in label_ids), tokenizer.sep_id, tokenizer.pad_id,
                   tokenizer.mask_id, bool(getattr(backbone, "causal", True)),
                   resolve_repeat(repeat, backbone))

    def length(self, n_demos: int) -> int:
        """Tokens of an example with ``n_demos`` demonstrations."""
        answer = 1 if self.causal else 3  # [SEP]  |  [SEP] [MASK] [SEP]
        return self.repeat * n_demos * (self.task_length + 3) + self.task_length + answer

    def check(self, n_demos: int, shots: int, max_length: int | None) -> None:
        T = self.task_length
        rep = f" shown {self.repeat} times" if self.repeat > 1 else ""
        tail = "1" if self.causal else "3 ([SEP] [MASK] [SEP])"
        check_fits(self.length(n_demos), max_length,
                   f"k-shot layout with {shots} shots per class: {n_demos} demonstrations{rep} of "
                   f"{T} + 3 tokens (sequence [SEP] label [SEP]) + the query's {T} + {tail} tokens")

    def pad(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` left-padded with ``[PAD]`` to ``task_length``."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > self.task_length:
            raise BioseqError(f"a sequence of {len(ids)} tokens is longer than the task length "
                              f"{self.task_length}")
        return np.concatenate([np.full(self.task_length - len(ids), self.pad_id, dtype=np.int64), ids])

    def encode(self, demos: Sequence[tuple[np.ndarray, int]], query: np.ndarray) -> tuple[np.ndarray, int]:
        """``(ids [length(len(demos))], answer position)`` for demonstrations ``(ids, class)`` and a query."""
        sep = np.array([self.sep_id], dtype=np.int64)
        block = []
        for ids, label in demos:
            block += [self.pad(ids), sep, np.array([self.label_ids[int(label)]], dtype=np.int64), sep]
        pieces = block * self.repeat + [self.pad(query), sep]
        if not self.causal:
            pieces.append(np.array([self.mask_id, self.sep_id], dtype=np.int64))
        ids = np.concatenate(pieces)
        return ids, len(ids) - 1 if self.causal else len(ids) - 2


def resolve_repeat(repeat: int | str, backbone: nn.Module) -> int:
    """``"auto"`` -> 2 for a backbone with a recurrent state, else 1; an int >= 1 as is."""
    if repeat == "auto":
        return 2 if getattr(backbone, "supports_state", False) else 1
    repeat = int(repeat)
    if repeat < 1:
        raise BioseqError(f"demonstration repeat must be >= 1 or 'auto', got {repeat}")
    return repeat


def sample_demos(labels: np.ndarray, shots: int, rng: np.random.Generator,
                 exclude: int | None = None) -> np.ndarray:
    """Indices of ``shots`` items of every class (class ids 0..C-1 present in ``labels``), shuffled.

    ``exclude`` (an index) is never drawn. A class with fewer than ``shots`` items is an error.
    """
    labels = np.asarray(labels)
    picked = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if exclude is not None:
            pool = pool[pool != exclude]
        if len(pool) < shots:
            raise BioseqError(f"{shots} shots per class: class {int(c)} has only {len(pool)} training "
                              "sequences")
        picked.append(rng.choice(pool, size=shots, replace=False))
    out = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return rng.permutation(out)


def _answer_logits(backbone: nn.Module, ids: torch.Tensor, answer: torch.Tensor,
                   label_ids: torch.Tensor) -> torch.Tensor:
    hidden = backbone(ids)
    h = hidden[torch.arange(ids.shape[0], device=ids.device), answer]
    return restrict_logits(backbone.lm_logits(h), label_ids).float()


class KShotTask:
    """A k-shot classification task: the training pool (demonstrations) and the format.

    ``pool_ids``: token ids of every training sequence (no specials); ``pool_labels`` their classes.
    """

    def __init__(self, backbone: nn.Module, tokenizer, label_ids: Sequence[int],
                 pool_seqs: Sequence[str], pool_labels: np.ndarray, *, task_length: int | None = None,
                 repeat: int | str = 1, seed: int = 0):
        self.backbone, self.tokenizer = backbone, tokenizer
        self.pool_ids = [tokenizer.encode(s) for s in pool_seqs]
        self.pool_labels = np.asarray(pool_labels, dtype=np.int64)
        if len(self.pool_ids) != len(self.pool_labels):
            raise BioseqError("k-shot: training sequences and labels differ in number")
        if len(np.unique(self.pool_labels)) != len(label_ids) and len(self.pool_labels):
            raise BioseqError(f"k-shot: {len(label_ids)} label tokens but the training pool has classes "
                              f"{sorted(set(self.pool_labels.tolist()))}")
        if task_length is None:
            task_length = max((len(i) for i in self.pool_ids), default=1)
        self.format = KShotFormat.for_backbone(backbone, tokenizer, label_ids, task_length, repeat)
        self.seed = seed

    @property
    def num_classes(self) -> int:
        return len(self.format.label_ids)

    def example(self, query_ids: np.ndarray, shots: int, key: int, exclude: int | None = None):
        """``(ids, answer position)`` of query number ``key`` with its seeded demonstrations."""
        rng = np.random.default_rng([self.seed, int(key)])
        idx = sample_demos(self.pool_labels, shots, rng, exclude) if shots else []
        return self.format.encode([(self.pool_ids[i], self.pool_labels[i]) for i in idx], query_ids)

    def check(self, shots: int) -> None:
        self.format.check(shots * self.num_classes, shots, getattr(self.backbone, "max_length", None))

    def batches(self, queries: Sequence[np.ndarray], shots: int, batch_size: int, keys: Sequence[int],
                excludes: Sequence[int | None] | None = None):
        """Yield ``(ids [b, length], answer [b], slice)``; every example of one ``shots`` has one length."""
        self.check(shots)
        device = next(self.backbone.parameters()).device
        for start in range(0, len(queries), batch_size):
            sl = slice(start, min(len(queries), start + batch_size))
            rows = [self.example(q, shots, k, None if excludes is None else excludes[i + start])
                    for i, (q, k) in enumerate(zip(queries[sl], keys[sl]))]
            ids = torch.from_numpy(np.stack([r[0] for r in rows])).to(device)
            answer = torch.as_tensor([r[1] for r in rows], device=device)
            yield ids, answer, sl

    @torch.no_grad()
    def scores(self, query_seqs: Sequence[str], shots: int, batch_size: int = 8, progress=None,
               backbone: nn.Module | None = None) -> np.ndarray:
        """Label-token logits ``[N, C]`` of every query with ``shots`` demonstrations per class."""
        model = backbone if backbone is not None else self.backbone
        was_training = model.training
        model.eval()
        label_ids = torch.as_tensor(self.format.label_ids)
        queries = [self.tokenizer.encode(s) for s in query_seqs]
        out = []
        for ids, answer, sl in self.batches(queries, shots, batch_size, range(len(queries))):
            out.append(_answer_logits(model, ids, answer, label_ids.to(ids.device)).cpu())
            if progress is not None:
                progress.update(sl.stop - sl.start)
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_classes), dtype=np.float32)


def instruction_tune(task: KShotTask, shots: int, n_examples: int, *, lr: float = 1e-4,
                     epochs: int = 1, batch_size: int = 8, seed: int = 0, progress=None) -> nn.Module:
    """A copy of ``task.backbone`` finetuned (all parameters) on ``n_examples`` k-shot examples.

    The examples are drawn from the training pool (seeded, without replacement); each one's
    demonstrations come from the rest of the pool. AdamW (lr ``lr``, no weight decay), ``epochs`` passes,
    cross-entropy over the label-token logits at the answer position. The task's backbone is untouched.
    """
    if n_examples < 1:
        raise BioseqError(f"instruction tuning needs at least one example, got {n_examples}")
    if n_examples > len(task.pool_ids):
        raise BioseqError(f"instruction tuning on {n_examples} examples: the training pool has only "
                          f"{len(task.pool_ids)}")
    model = copy.deepcopy(task.backbone)
    model.requires_grad_(True)
    model.train()
    rng = np.random.default_rng([seed, 0x17])
    chosen = rng.choice(len(task.pool_ids), size=n_examples, replace=False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    label_ids = torch.as_tensor(task.format.label_ids)
    queries = [task.pool_ids[i] for i in chosen]
    targets = torch.from_numpy(task.pool_labels[chosen])
    # keys offset so that training demonstrations never coincide with the evaluation draws
    keys = [1_000_000_007 + int(i) for i in chosen]
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch, 0x18]).permutation(n_examples)
        qs, ks, ex = [queries[i] for i in order], [keys[i] for i in order], [int(chosen[i]) for i in order]
        for ids, answer, sl in task.batches(qs, shots, batch_size, ks, ex):
            y = targets[torch.as_tensor(order[sl])].to(ids.device)
            loss = F.cross_entropy(_answer_logits(model, ids, answer, label_ids.to(ids.device)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress.update(sl.stop - sl.start)
    return model.eval()


def length_budget(task_length: int, shots: int, num_classes: int, repeat: int = 1,
                  causal: bool = True) -> int:
    """Tokens of one k-shot example (for sizing ``l_max`` before pretraining a model for a sweep)."""
    fmt = KShotFormat(task_length, tuple(range(num_classes)), causal=causal, repeat=repeat)
    return fmt.length(shots * num_classes)

