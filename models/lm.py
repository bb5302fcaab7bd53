"""``LanguageModel``: causal or masked language-model pretraining over any backbone of the contract.

The backbone (any architecture registered in ``models.ARCHITECTURES``, see ``models/base.py``) maps
``input_ids [B, L]`` to final-normed hidden states ``[B, L, H]``. The LM head is the backbone's own
``lm_logits``: tied to the input embedding (``logits = hidden @ E^T``, HyenaDNA, Mamba) or an
untied weight saved with the backbone (xLSTM, -hf HyenaDNA), or a structured head (Caduceus RCPS);
``forward`` returns ``[B, L, V_padded]`` logits exactly like the official model (HyenaDNA pads the
12-token DNA vocabulary to 16 rows). CLM on a bidirectional backbone (``backbone.causal`` False) is
refused. The loss only uses the first ``tokenizer.vocab_size`` columns (the padding rows are not
tokens); perplexities are therefore over the real vocabulary.

Objectives (``objective=``):

* ``"clm"`` — next-token prediction. ``batch["labels"]`` (or, when absent, ``input_ids`` with ``[PAD]``
  set to -100) is shifted here: position ``t`` predicts label ``t + 1``; -100 is ignored.
* ``"mlm"`` — BERT masking done in this module (not in the collate function): 15% of the real,
  non-special tokens are chosen; of those 80% become ``[MASK]``, 10% a random symbol from
  ``tokenizer.symbol_ids``, 10% stay unchanged. The loss is over the chosen positions only. ``[PAD]`` and
  the special tokens ([CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK]) are never chosen.

Randomness (dropout, MLM masks) inside a step is drawn from a generator seeded by
``(step_seed, epoch, batch_idx, rank)``, so a run resumed from a mid-epoch checkpoint draws exactly the
same masks and dropout as the uninterrupted run (given a data loader that resumes mid-epoch too).

Logged metrics: ``train/loss`` (mean token loss of the step), ``train/ppl``, ``train/lr``,
``train/tokens_per_s`` (real tokens of the batch over wall time since the previous batch ended, one
process), ``val/loss`` and ``val/ppl`` (token-weighted over the whole validation epoch and all ranks:
``ppl = exp(sum of token losses / number of tokens)``), and the same for ``test/``.

Hyperparameters are plain data (architecture name, preset, backbone config dict, pretrained path,
tokenizer dict), so ``LanguageModel.load_from_checkpoint(path)`` rebuilds the model without the
original files: on save, the checkpoint's hyperparameters are rewritten to the resolved backbone
config and tokenizer.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from bioseq.errors import BioseqError
from bioseq.models.optim import build_optimizer

OBJECTIVES = ("clm", "mlm")
IGNORE_INDEX = -100


def special_token_ids(tokenizer) -> list[int]:
    """Ids of the special tokens of a tokenizer of the common interface (never masked in MLM)."""
    names = ("cls_id", "sep_id", "bos_id", "mask_id", "pad_id", "reserved_id", "unk_id")
    return sorted({int(getattr(tokenizer, n)) for n in names if getattr(tokenizer, n, None) is not None})


def mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_id: int,
    symbol_ids: torch.Tensor,
    special_ids: list[int] | torch.Tensor,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a batch.

    Args: ``input_ids`` LongTensor[B, L]; ``attention_mask`` BoolTensor[B, L] (True = real token);
    ``symbol_ids`` LongTensor[S] (candidates for random replacement); ``special_ids`` never chosen.
    Returns ``(masked_ids [B, L], labels [B, L])`` with ``labels = input_ids`` at the chosen positions and
    -100 elsewhere. Of the chosen positions 80% are replaced by ``mask_id``, 10% by a uniformly random
    symbol and 10% are kept. Random numbers come from ``generator`` (a CPU generator) when given.
    """
    device = input_ids.device
    specials = torch.as_tensor(special_ids, dtype=torch.long, device=device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, specials)
    shape = input_ids.shape
    u_choose = torch.rand(shape, generator=generator).to(device)
    u_kind = torch.rand(shape, generator=generator).to(device)
    symbols = symbol_ids.to(device)
    pick = torch.randint(len(symbols), shape, generator=generator).to(device)
    chosen = maskable & (u_choose < probability)
    masked = input_ids.clone()
    masked[chosen & (u_kind < 0.8)] = mask_id
    random_sym = chosen & (u_kind >= 0.8) & (u_kind < 0.9)
    masked[random_sym] = symbols[pick[random_sym]]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


class LanguageModel(L.LightningModule):
    """Causal (``clm``) or masked (``mlm``) LM pretraining of a backbone with a tied LM head.

    Args:
        backbone: an already-built backbone module (programmatic use). When None the backbone is built
            from ``pretrained`` (a directory or preset name for ``models.load_backbone``), else from
            ``arch`` + ``preset`` + ``backbone_config`` overrides via ``models.build_backbone``.
        arch: architecture key in ``models.ARCHITECTURES`` (e.g. ``"hyena"``).
        preset: preset name of that architecture (e.g. ``"hyenadna-tiny-1k"``), random init.
        backbone_config: config field overrides (or a full config dict), e.g. ``{"d_model": 128}``.
        pretrained: weights to start from (directory in a supported layout).
        tokenizer: a tokenizer object, a tokenizer name (``"dna"``, ``"protein"``, ``"smiles"``), a
            path to a tokenizer JSON, or a tokenizer dict. Default: the tokenizer saved with
            ``pretrained``, else the data module's ``tokenizer`` attribute at setup, else
            ``get_tokenizer(config.alphabet)``.
        objective: ``"clm"`` or ``"mlm"``.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, on weight matrices only (see ``models.optim``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warmup length in optimizer steps, or a fraction of ``total_steps`` if a
            float in (0, 1) (HyenaDNA: 1% of training).
        total_steps: length of the cosine schedule in optimizer steps; None = the Trainer's
            ``estimated_stepping_batches`` (i.e. ``max_steps``, or epochs x batches).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (HyenaDNA: 0.1).
        mlm_probability: fraction of real tokens chosen for MLM.
        step_seed: base seed of the per-step random generator (dropout, MLM masks); named apart from
            the data module's ``seed`` (Lightning merges both hyperparameter sets).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        arch: str = "hyena",
        preset: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        tokenizer: str | dict[str, Any] | None = None,
        objective: str = "clm",
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int | float = 0.01,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        mlm_probability: float = 0.15,
        step_seed: int = 0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise BioseqError(f"objective must be one of {OBJECTIVES}, got '{objective}'")
        if not 0.0 < mlm_probability < 1.0:
            raise BioseqError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone if backbone is not None else self._build_backbone()
        self.hparams.arch = getattr(self.backbone.config, "arch", arch)
        if objective == "clm" and not getattr(self.backbone, "causal", True):
            raise BioseqError(f"objective 'clm' (next-token prediction) needs a causal backbone, but this "
                              f"'{self.hparams.arch}' backbone is bidirectional (every position sees the "
                              "whole sequence): use objective 'mlm'")
        self._tokenizer_explicit = tokenizer is not None
        self.tokenizer = self._resolve_tokenizer(tokenizer)
        if tokenizer is not None and not isinstance(tokenizer, (str, dict)):
            self.hparams.tokenizer = self.tokenizer.to_dict()  # keep hparams plain data
        self._check_vocab(self.tokenizer, "tokenizer")
        self._val_sums: dict[str, torch.Tensor] = {}
        self._last_batch_end: float | None = None

    # ------------------------------------------------------------------ construction
    def _build_backbone(self) -> nn.Module:
        from bioseq import models

        hp = self.hparams
        if hp.pretrained is not None and hp.backbone_config:
            raise BioseqError("give either model.pretrained or model.backbone_config, not both")
        if hp.pretrained is None and hp.preset is None and not hp.backbone_config:
            raise BioseqError("LanguageModel needs a backbone: set model.preset, model.backbone_config "
                              "or model.pretrained")
        return models.resolve_backbone(hp.pretrained, arch=hp.arch, preset=hp.preset,
                                       config=hp.backbone_config)

    def _resolve_tokenizer(self, spec):
        if hasattr(spec, "vocab_size") and hasattr(spec, "to_dict"):
            return spec  # a tokenizer object (programmatic use)
        if spec is None:
            from bioseq import models
            source = self.hparams.pretrained if self.hparams.pretrained is not None else self.backbone
            try:
                return models.load_tokenizer_for(source)
            except (OSError, BioseqError):
                return models.load_tokenizer_for(self.backbone)
        from bioseq import tokenizers

        if isinstance(spec, dict):
            return tokenizers.tokenizer_from_config(spec)
        if str(spec).endswith(".json"):
            return tokenizers.tokenizer_from_config(_read_json(spec))
        return tokenizers.get_tokenizer(spec)

    def _check_vocab(self, tokenizer, what: str) -> None:
        if tokenizer.vocab_size > self.backbone.vocab_size:
            raise BioseqError(
                f"{what} has {tokenizer.vocab_size} tokens but the backbone's embedding has only "
                f"{self.backbone.vocab_size} rows: raise model.backbone_config.vocab_size"
            )

    def setup(self, stage: str) -> None:
        """Adopt the data module's tokenizer (e.g. a SMILES vocabulary built from the data)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_tok = getattr(datamodule, "tokenizer", None)
        if data_tok is None:
            return
        if getattr(data_tok, "name", None) != getattr(self.tokenizer, "name", None):
            raise BioseqError(f"the data uses the '{data_tok.name}' tokenizer but the model was built for "
                              f"'{self.tokenizer.name}'")
        if not self._tokenizer_explicit:
            self._check_vocab(data_tok, "the data module's tokenizer")
            self.tokenizer = data_tok

    # ------------------------------------------------------------------ forward / loss
    @property
    def n_tokens(self) -> int:
        """Number of real vocabulary entries (logit columns used by the loss)."""
        return int(self.tokenizer.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L]`` -> logits ``[B, L, V_padded]`` (the backbone's LM head: tied to the
        embedding or its own weight, as the backbone declares; padding columns included)."""
        hidden = self.backbone(input_ids, attention_mask=attention_mask)
        return self.backbone.lm_logits(hidden)

    def _targets(self, batch: dict, generator: torch.Generator | None):
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        if self.hparams.objective == "mlm":
            tok = self.tokenizer
            inputs, labels = mlm_mask(
                input_ids, attention_mask, mask_id=tok.mask_id, symbol_ids=torch.as_tensor(tok.symbol_ids),
                special_ids=special_token_ids(tok), probability=self.hparams.mlm_probability,
                generator=generator,
            )
            return inputs, attention_mask, labels
        labels = batch.get("labels")
        if labels is None:
            labels = input_ids.masked_fill(~attention_mask, IGNORE_INDEX)
        return input_ids, attention_mask, labels

    def token_losses(self, batch: dict, generator: torch.Generator | None = None):
        """Sum of token cross-entropies (nats, fp32) and the number of scored tokens of a batch."""
        inputs, attention_mask, labels = self._targets(batch, generator)
        logits = self(inputs, attention_mask=attention_mask)[..., : self.n_tokens]
        if self.hparams.objective == "clm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        labels = labels.reshape(-1)
        count = (labels != IGNORE_INDEX).sum()
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels,
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        return loss_sum, count

    def _step_generator(self, batch_idx: int, stage: int) -> torch.Generator:
        epoch = self.current_epoch if stage == 0 else 0
        key = (self.hparams.step_seed, stage, epoch, batch_idx, self.global_rank)
        return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF)

    def _run_step(self, batch: dict, batch_idx: int, stage: int):
        generator = self._step_generator(batch_idx, stage)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            return self.token_losses(batch, generator)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Mean token loss of the global batch. Under DDP each rank returns ``W * loss_sum_r / N`` (N = the
        scored tokens of all W ranks), so DDP's gradient average is the gradient of ``sum_r loss_sum_r / N``:
        W ranks with batch B train exactly like one process with batch W x B, padding included. The logged
        ``train/loss`` is that global mean (one all-reduce of two numbers per step)."""
        loss_sum, count = self._run_step(batch, batch_idx, stage=0)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            totals = self.trainer.strategy.reduce(torch.stack([loss_sum.detach(), count.to(loss_sum.dtype)]),
                                                  reduce_op="sum")
            loss = loss_sum * world / totals[1].clamp(min=1)
            logged = totals[0] / totals[1].clamp(min=1)
        else:
            loss = loss_sum / count.clamp(min=1)
            logged = loss.detach()
        self.log("train/loss", logged, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/ppl", torch.exp(logged), batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._last_batch_end is None:
            self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        mask = batch.get("attention_mask")
        tokens = float(mask.sum()) if mask is not None else float(batch["input_ids"].numel())
        elapsed = max(now - (self._last_batch_end or now), 1e-9)
        self._last_batch_end = now
        self.log("train/tokens_per_s", tokens / elapsed, on_step=True, on_epoch=False)
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if optimizers:
            self.log("train/lr", optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, prefix: str) -> None:
        self._val_sums[prefix] = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _eval_step(self, batch: dict, batch_idx: int, prefix: str, dataloader_idx: int = 0) -> torch.Tensor:
        loss_sum, count = self._run_step(batch, batch_idx + 1_000_003 * dataloader_idx, stage=1)
        acc = self._val_sums.setdefault(prefix, torch.zeros(2, dtype=torch.float64, device=self.device))
        acc += torch.stack([loss_sum.detach().double(), count.double()])
        return loss_sum / count.clamp(min=1)

    def _eval_end(self, prefix: str) -> None:
        acc = self._val_sums.pop(prefix, None)
        if acc is None:
            return
        acc = self.trainer.strategy.reduce(acc, reduce_op="sum") if self._trainer is not None else acc
        loss = (acc[0] / acc[1].clamp(min=1)).float()
        self.log(f"{prefix}/loss", loss, prog_bar=False, sync_dist=False)
        self.log(f"{prefix}/ppl", torch.exp(loss), prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/tokens", acc[1].float(), sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ------------------------------------------------------------------ optimisation
    def schedule_length(self) -> int:
        """Optimizer steps covered by the cosine schedule."""
        if self.hparams.total_steps:
            return int(self.hparams.total_steps)
        estimated = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise BioseqError("cannot infer the schedule length from the data: set model.total_steps or "
                              "trainer.max_steps")
        return max(1, int(estimated))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer, scheduler = build_optimizer(
            self, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas), eps=hp.eps,
            warmup_steps=hp.warmup_steps, total_steps=self.schedule_length(), min_lr_ratio=hp.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints / export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hp = dict(checkpoint.get("hyper_parameters", {}))
        hp.update(
            arch=getattr(self.backbone.config, "arch", hp.get("arch")),
            preset=None,
            pretrained=None,
            backbone_config=self.backbone.config.to_dict(),
            tokenizer=self.tokenizer.to_dict(),
        )
        checkpoint["hyper_parameters"] = hp

    def export(self, directory) -> None:
        """Write the backbone in ``save_pretrained`` format (config.json, model.safetensors,
        tokenizer.json) for ``models.load_backbone`` / ``bioseq embed`` / finetuning."""
        self.backbone.save_pretrained(directory, tokenizer=self.tokenizer)


def _read_json(path) -> dict:
    import json

    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise BioseqError(f"{path}: cannot read tokenizer JSON ({err})") from None
