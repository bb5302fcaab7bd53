"""Soft-prompt tuning: K trainable prompt embeddings in front of a frozen backbone (HyenaDNA protocol).

The sequence's class is read off the frozen LM head as the *next token after the sequence*, restricted
to one label token per class (``finetune.label_tokens``; DNA default ``A``/``N`` for two classes,
``A``/``G``/``N`` for three). Only the prompt is trained::

    inputs_embeds = [p_1 .. p_K, E[x_1] .. E[x_L]]            [B, K + L, E]   (E = embedding width)
    hidden        = backbone(inputs_embeds=...)               [B, K + L, H]   (backbone frozen, eval mode)
    class scores  = lm_logits(hidden[:, K + L - 1])[label_ids] [B, C]          (LM head frozen)

``p`` starts as N(0, 0.02) (``init_std``). A bidirectional (masked-LM) backbone answers at a ``[MASK]``
token appended after the sequence instead (position ``K + L``). Sequences are right-padded; each row
answers at its own last position. The backbone's ``max_length`` counts the K prompt tokens (and the
``[MASK]``): an input that does not fit is refused with a message saying so.

Training (:func:`train_soft_prompt`): AdamW (lr 1e-3, no weight decay) on the prompt only, cross-entropy
over the label-token logits, ``ReduceLROnPlateau`` on the validation loss after every epoch, early
stopping after ``patience`` epochs without a better validation loss; the prompt of the best epoch is
kept. The backbone's parameters get ``requires_grad = False`` and stay bit-identical (gradients flow
through its activations to the prompt, never into its weights). K = 0 is the frozen model's zero-shot
answer (nothing to train).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bioseq.errors import BioseqError
from bioseq.finetune.label_tokens import check_fits, restrict_logits


def embedding_probe(backbone: nn.Module) -> torch.Tensor:
    """``embed_tokens`` of one token, ``[1, 1, E]``: its width E (what ``inputs_embeds`` takes; 2 x d for
    RCPS models), dtype and device."""
    device = next(backbone.parameters()).device
    with torch.no_grad():
        return backbone.embed_tokens(torch.zeros(1, 1, dtype=torch.long, device=device))


def freeze(backbone: nn.Module) -> nn.Module:
    """``requires_grad = False`` on every parameter and eval mode (no dropout); returns the module."""
    backbone.requires_grad_(False)
    return backbone.eval()


class SoftPromptModel(nn.Module):
    """A frozen backbone with ``n_prompt`` trainable input embeddings in front of every sequence.

    Args:
        backbone: any backbone of the contract (``models/base.py``): ``embed_tokens``, ``forward(
            inputs_embeds=...)``, ``lm_logits``, ``causal``, ``max_length``. It is frozen here.
        label_ids: vocabulary id of each class's label token (class order).
        n_prompt: K, the number of prompt embeddings (0 = none).
        mask_id: the ``[MASK]`` id (bidirectional backbones answer there).
        init_std: standard deviation of the prompt's normal initialisation.
        generator: random source for the initialisation (CPU generator).

    ``forward(input_ids [B, L], attention_mask [B, L]) -> class logits [B, C]``.
    """

    def __init__(self, backbone: nn.Module, label_ids: Sequence[int], n_prompt: int, *, mask_id: int = 3,
                 init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        if n_prompt < 0:
            raise BioseqError(f"number of prompt tokens must be >= 0, got {n_prompt}")
        self.backbone = freeze(backbone)
        self.causal = bool(getattr(backbone, "causal", True))
        self.mask_id = int(mask_id)
        label_ids = torch.as_tensor(list(label_ids), dtype=torch.long)
        self.register_buffer("label_ids", label_ids, persistent=False)
        ref = embedding_probe(backbone)
        init = torch.randn(n_prompt, ref.shape[-1], generator=generator) * init_std
        self.prompt = nn.Parameter(init.to(device=ref.device, dtype=ref.dtype))

    @property
    def n_prompt(self) -> int:
        return int(self.prompt.shape[0])

    def train(self, mode: bool = True):
        """Only the prompt trains: the backbone stays in eval mode (no dropout) either way."""
        super().train(mode)
        self.backbone.eval()
        return self

    def answer_slots(self) -> int:
        """Tokens added after the sequence: 1 ([MASK]) for a bidirectional backbone, else 0."""
        return 0 if self.causal else 1

    def check_length(self, seq_len: int) -> None:
        extra = " + 1 [MASK]" if not self.causal else ""
        total = self.n_prompt + seq_len + self.answer_slots()
        check_fits(total, getattr(self.backbone, "max_length", None),
                   f"{self.n_prompt} soft-prompt tokens + {seq_len} sequence tokens{extra}")

    def inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(inputs_embeds [B, K + L', E], attention_mask [B, K + L'], answer position [B])``."""
        B, L = input_ids.shape
        self.check_length(L)
        lengths = attention_mask.long().sum(1)
        if bool((lengths == 0).any()):
            raise BioseqError("soft prompt: an empty sequence (no tokens) has no position to answer at")
        if not self.causal:  # [MASK] right after each sequence's last token
            pad = torch.zeros(B, 1, dtype=input_ids.dtype, device=input_ids.device)
            input_ids = torch.cat([input_ids, pad], 1)
            input_ids = input_ids.scatter(1, lengths[:, None], self.mask_id)
            attention_mask = torch.cat([attention_mask.bool(), pad.bool()], 1)
            attention_mask = attention_mask.scatter(1, lengths[:, None], True)
            answer = self.n_prompt + lengths
        else:
            answer = self.n_prompt + lengths - 1
        tokens = self.backbone.embed_tokens(input_ids)
        prompt = self.prompt.to(tokens.dtype).unsqueeze(0).expand(B, -1, -1)
        embeds = torch.cat([prompt, tokens], 1)
        mask = torch.cat([torch.ones(B, self.n_prompt, dtype=torch.bool, device=input_ids.device),
                          attention_mask.bool()], 1)
        return embeds, mask, answer

    def answer_logits(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The LM head's logits over the whole vocabulary at the answer position: ``[B, V]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        embeds, mask, answer = self.inputs(input_ids, attention_mask)
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=mask)
        return self.backbone.lm_logits(hidden[torch.arange(hidden.shape[0], device=hidden.device), answer])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, C]``: the answer-position logits of the label tokens (float32)."""
        return restrict_logits(self.answer_logits(input_ids, attention_mask), self.label_ids).float()


# --------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class SoftPromptConfig:
    """Optimisation settings (defaults: the HyenaDNA soft-prompt protocol where it names one)."""

    n_prompt: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_epochs: int = 20
    steps_per_epoch: int | None = None   # None: one full pass over the training set per epoch
    patience: int = 3                    # early stopping: epochs without a better validation loss
    plateau_patience: int = 1            # ReduceLROnPlateau on the validation loss
    plateau_factor: float = 0.5
    init_std: float = 0.02
    seed: int = 0


@dataclass
class SoftPromptResult:
    model: SoftPromptModel
    history: list[dict] = field(default_factory=list)   # one row per epoch
    best_epoch: int | None = None
    steps: int = 0
    config: dict = field(default_factory=dict)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _encode(tokenizer, seqs: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer.batch_encode(list(seqs))
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def class_scores(model: nn.Module, tokenizer, seqs: Sequence[str], batch_size: int = 64,
                 progress=None) -> np.ndarray:
    """Label-token logits ``[N, C]`` (float32) of ``model`` (a :class:`SoftPromptModel`) for ``seqs``."""
    was_training = model.training
    model.eval()
    device = model.prompt.device
    out = []
    for sl in _batches(len(seqs), batch_size):
        ids, mask = _encode(tokenizer, seqs[sl], device)
        out.append(model(ids, mask).cpu())
        if progress is not None:
            progress.update(sl.stop - sl.start)
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.label_ids)), dtype=np.float32)


@torch.no_grad()
def label_token_logprobs(backbone: nn.Module, tokenizer, label_ids: Sequence[int], seqs: Sequence[str],
                         batch_size: int = 64) -> np.ndarray:
    """Mean log-probability (natural log, softmax over the whole vocabulary) of each label token at the
    answer position of the frozen backbone without a prompt, over ``seqs``: ``[C]``. A label token far
    below the others is one the model does not emit (e.g. ``N`` after pretraining on sequences without
    N), and a prompt cannot teach the frozen LM head to answer it (``label_tokens.unreachable_labels``)."""
    model = SoftPromptModel(backbone, label_ids, 0, mask_id=getattr(tokenizer, "mask_id", 3))
    model.eval()
    device = model.prompt.device
    total, n = torch.zeros(len(label_ids), dtype=torch.float64), 0
    for sl in _batches(len(seqs), batch_size):
        ids, mask = _encode(tokenizer, seqs[sl], device)
        logp = torch.log_softmax(model.answer_logits(ids, mask).double(), -1)
        total += restrict_logits(logp, model.label_ids).sum(0).cpu()
        n += sl.stop - sl.start
    return (total / max(n, 1)).numpy()


def score(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Cross-entropy over the label tokens plus accuracy, MCC, F1 (and AUROC) of the argmax."""
    from bioseq.finetune.probe import classification_metrics

    labels = np.asarray(labels, dtype=np.int64)
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    loss = float(F.cross_entropy(t, torch.from_numpy(labels))) if len(labels) else float("nan")
    probs = torch.softmax(t, -1).numpy()
    metrics = classification_metrics(labels, probs.argmax(-1), probs, num_classes=num_classes)
    return {"loss": loss, **metrics, "n": int(len(labels))}


def train_soft_prompt(backbone: nn.Module, tokenizer, label_ids: Sequence[int],
                      train_seqs: Sequence[str], train_labels: np.ndarray,
                      val_seqs: Sequence[str], val_labels: np.ndarray,
                      config: SoftPromptConfig | None = None, progress: bool = False) -> SoftPromptResult:
    """Train ``config.n_prompt`` prompt embeddings on a frozen ``backbone`` (see the module docstring).

    ``backbone`` is frozen in place (``requires_grad = False``, eval mode). Returns the model holding the
    prompt of the best validation epoch, the per-epoch history (train loss, validation loss / accuracy,
    learning rate) and the number of optimizer steps. ``progress`` shows a tqdm bar on stderr.
    """
    cfg = config or SoftPromptConfig()
    num_classes = len(label_ids)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = SoftPromptModel(backbone, label_ids, cfg.n_prompt, mask_id=tokenizer.mask_id,
                            init_std=cfg.init_std, generator=generator)
    result = SoftPromptResult(model, config=asdict(cfg))
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if len(train_seqs) != len(train_labels) or len(val_seqs) != len(val_labels):
        raise BioseqError("soft prompt: sequences and labels differ in number")
    longest = max((len(s) for s in list(train_seqs) + list(val_seqs)), default=0)
    model.check_length(longest)  # fail before any training
    if cfg.n_prompt == 0:
        return result  # nothing to train: the frozen model's own answer
    if not len(train_seqs) or not len(val_seqs):
        raise BioseqError("soft prompt: training needs at least one training and one validation sequence")

    device = model.prompt.device
    opt = torch.optim.AdamW([model.prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                       patience=cfg.plateau_patience)
    rng = np.random.default_rng(cfg.seed)
    per_epoch = math.ceil(len(train_seqs) / cfg.batch_size)
    if cfg.steps_per_epoch:
        per_epoch = min(per_epoch, cfg.steps_per_epoch)
    bar = _progress(progress, cfg.max_epochs * (per_epoch * cfg.batch_size + len(val_seqs)),
                    f"soft prompt K={cfg.n_prompt}")
    best_loss, best_state, stale = math.inf, None, 0
    order = rng.permutation(len(train_seqs))
    cursor = 0
    try:
        for epoch in range(cfg.max_epochs):
            model.train()
            losses = []
            for _ in range(per_epoch):
                if cursor >= len(order):
                    order, cursor = rng.permutation(len(train_seqs)), 0
                idx = order[cursor:cursor + cfg.batch_size]
                cursor += len(idx)
                ids, mask = _encode(tokenizer, [train_seqs[i] for i in idx], device)
                target = torch.from_numpy(train_labels[idx]).to(device)
                loss = F.cross_entropy(model(ids, mask), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                result.steps += 1
                losses.append(loss.item())
                if bar is not None:
                    bar.update(len(idx))
            val = score(class_scores(model, tokenizer, val_seqs, cfg.eval_batch_size, bar), val_labels,
                        num_classes)
            sched.step(val["loss"])
            result.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                                   "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                                   "lr": opt.param_groups[0]["lr"]})
            if bar is not None:
                bar.set_postfix(val_loss=f"{val['loss']:.4f}", val_acc=f"{val['accuracy']:.3f}")
            if val["loss"] < best_loss:
                best_loss, best_state, stale = val["loss"], model.prompt.detach().clone(), 0
                result.best_epoch = epoch
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    finally:
        if bar is not None:
            bar.close()
    with torch.no_grad():
        model.prompt.copy_(best_state)
    return result


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq", leave=False, dynamic_ncols=True)

