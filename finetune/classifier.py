"""``SequenceClassifier``: supervised finetuning of any backbone of the contract (classification/regression).

The backbone comes from (first that applies)

* ``backbone_config`` -- a dict of the backbone's config dataclass (with ``arch``): random init of that
  architecture. ``load_from_checkpoint`` uses this path: ``__init__`` always records the config of the
  backbone it built, so a finetuned checkpoint rebuilds without the original weights directory;
* ``backbone`` as an ``nn.Module`` (programmatic use; any backbone of the contract);
* ``backbone`` as a string -- ``models.load_backbone(spec)``: a bioseq/exported or released checkpoint
  directory, or a preset name (random init, e.g. ``hyenadna-tiny-1k``);
* ``arch`` + ``preset`` (+ ``backbone_overrides``) -- from scratch via ``models.build_backbone``.

All of it goes through ``models.resolve_backbone``, the builder that pretraining, ``embed`` and
``probe`` use too; unknown config keys are an error. The head's input width is the backbone's ``hidden_size``.

Metrics (torchmetrics objects, updated per batch and computed once per epoch over the WHOLE evaluation
set): ``accuracy``, ``mcc``, ``f1`` (binary: positive class; multiclass: macro), ``f1_macro``, ``auroc``;
regression: ``mse``, ``pearson``, ``r2``. Logged as ``val/<name>`` and ``test/<name>``; select the best
checkpoint with ``ModelCheckpoint(monitor="val/<metric>", mode="max")``.

Optimisation: AdamW over ``models.optim.param_groups`` (no decay for norms, biases, embeddings and
parameters marked ``_no_weight_decay``), optional layer-wise lr decay (``layer_lr_decay`` < 1: block i
(0-based) of n gets ``lr * decay**(n - i)``, the embedding ``lr * decay**(n + 1)``, the final norm ``lr``,
the head ``head_lr or lr``), linear warmup then cosine to ``min_lr_ratio * lr`` per optimizer step.
"""

from __future__ import annotations

import os
import re

import lightning as L
import torch
import torchmetrics as tm
from torch import nn
from torch.nn import functional as F

from bioseq.errors import BioseqError
from bioseq.finetune.heads import PredictionHead, SequenceModel
from bioseq.models import resolve_backbone
from bioseq.models.optim import build_optimizer


def _classification_metrics(num_classes: int) -> tm.MetricCollection:
    if num_classes == 2:
        return tm.MetricCollection(
            {
                "accuracy": tm.classification.BinaryAccuracy(),
                "mcc": tm.classification.BinaryMatthewsCorrCoef(),
                "f1": tm.classification.BinaryF1Score(),
                "f1_macro": tm.classification.MulticlassF1Score(2, average="macro"),
                "auroc": tm.classification.BinaryAUROC(),
            }
        )
    return tm.MetricCollection(
        {
            "accuracy": tm.classification.MulticlassAccuracy(num_classes, average="micro"),
            "mcc": tm.classification.MulticlassMatthewsCorrCoef(num_classes),
            "f1": tm.classification.MulticlassF1Score(num_classes, average="macro"),
            "f1_macro": tm.classification.MulticlassF1Score(num_classes, average="macro"),
            "auroc": tm.classification.MulticlassAUROC(num_classes, average="macro"),
        }
    )


def _regression_metrics(num_outputs: int) -> tm.MetricCollection:
    return tm.MetricCollection(
        {
            "mse": tm.MeanSquaredError(),
            "pearson": tm.PearsonCorrCoef(num_outputs=num_outputs),
            "r2": tm.R2Score(num_outputs=num_outputs) if num_outputs > 1 else tm.R2Score(),
        }
    )


class SequenceClassifier(L.LightningModule):
    """Backbone + pooling head for sequence classification (``problem_type="classification"``) or regression.

    Batches: ``input_ids`` Long[B, L], ``attention_mask`` Bool[B, L], ``labels`` Long[B] (or Float[B] /
    Float[B, T] for regression), ``index`` Long[B]. ``predict_step`` returns ``{"index", "logits",
    "probs" (classification), "preds"}``.
    """

    def __init__(
        self,
        backbone: str | nn.Module | None = "hyenadna-tiny-1k",
        arch: str = "hyena",
        preset: str | None = None,
        backbone_config: dict | None = None,
        backbone_overrides: dict | None = None,
        num_classes: int = 2,
        problem_type: str = "classification",
        pooling: str = "mean",
        head: str = "linear",
        head_hidden_size: int | None = None,
        dropout: float = 0.0,
        rc_average: bool | str = False,
        freeze_backbone: bool = False,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        head_lr: float | None = None,
        layer_lr_decay: float = 1.0,
        warmup_steps: int | float = 0.01,
        min_lr_ratio: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        if problem_type not in ("classification", "regression"):
            raise BioseqError(f"problem_type must be 'classification' or 'regression', got '{problem_type}'")
        self.save_hyperparameters(ignore=["backbone"])
        module = resolve_backbone(backbone, arch=arch if preset is None else None, preset=preset,
                                  config=backbone_config, overrides=backbone_overrides)
        self.weights_origin = getattr(module, "weights_origin", None)
        # Record what was built so load_from_checkpoint rebuilds it (the weights come from the checkpoint).
        self.hparams["backbone_config"] = module.config.to_dict()
        self.hparams["backbone"] = None
        self.hparams["backbone_overrides"] = None
        tokenizer = None
        if rc_average:
            from bioseq.models import load_tokenizer_for

            tokenizer = load_tokenizer_for(module)
        head_module = PredictionHead(module.hidden_size, num_classes, pooling, head, head_hidden_size,
                                     dropout)
        self.model = SequenceModel(module, head_module, rc_average=rc_average, tokenizer=tokenizer)
        self.num_classes = num_classes
        self.is_regression = problem_type == "regression"
        if freeze_backbone:
            self.freeze_backbone()
        make = _regression_metrics if self.is_regression else _classification_metrics
        self.val_metrics = make(num_classes).clone(prefix="val/")
        self.test_metrics = make(num_classes).clone(prefix="test/")
        # evaluation losses: item-weighted means over the whole split and all ranks
        self.val_loss, self.test_loss = tm.MeanMetric(), tm.MeanMetric()
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        else:
            self.class_weights = None

    # -- freezing -----------------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self._frozen = True

    def unfreeze_backbone(self) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(True)
        self._frozen = False

    def on_train_epoch_start(self) -> None:
        if getattr(self, "_frozen", False):
            self.model.backbone.eval()  # no dropout in a frozen feature extractor

    # -- steps --------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return F.mse_loss(
                logits.float().view_as(labels.float()) if labels.dim() > 1 else logits.float().squeeze(-1),
                labels.float(),
            )
        return F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )

    def _update(self, metrics: tm.MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.is_regression:
            preds = logits.float().squeeze(-1) if labels.dim() == 1 else logits.float()
            metrics.update(preds, labels.float())
        elif self.num_classes == 2:
            probs = torch.softmax(logits.float(), -1)
            for name, metric in metrics.items():  # binary metrics take p(class 1); macro-F1 takes [B, 2]
                metric.update(probs if name.endswith("f1_macro") else probs[:, 1], labels)
        else:
            metrics.update(torch.softmax(logits.float(), -1), labels)

    def _step_seed(self, batch_idx: int) -> int:
        """Seed of a training step's random numbers (dropout): ``(run seed, epoch, batch, rank)``, so a run
        resumed from a mid-epoch checkpoint draws the same dropout masks as the uninterrupted run."""
        key = (int(os.environ.get("PL_GLOBAL_SEED", 0)), self.current_epoch, batch_idx, self.global_rank)
        return hash(key) & 0x7FFF_FFFF_FFFF

    def training_step(self, batch, batch_idx):
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed(batch_idx))
            logits = self(batch["input_ids"], batch["attention_mask"])
        loss = self._loss(logits, batch["labels"])
        # ranks hold equal batches (explicit sharding), so the mean over ranks is the global batch's loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.val_loss.update(self._loss(logits, batch["labels"]).detach(), weight=len(batch["labels"]))
        self.log("val/loss", self.val_loss, prog_bar=True, on_step=False, on_epoch=True)
        self._update(self.val_metrics, logits, batch["labels"])
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def test_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.test_loss.update(self._loss(logits, batch["labels"]).detach(), weight=len(batch["labels"]))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self._update(self.test_metrics, logits, batch["labels"])
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits = self(batch["input_ids"], batch["attention_mask"]).float()
        out = {"index": batch["index"], "logits": logits}
        if not self.is_regression:
            out["probs"] = torch.softmax(logits, -1)
            out["preds"] = logits.argmax(-1)
        else:
            out["preds"] = logits.squeeze(-1)
        return out

    # -- optimiser ----------------------------------------------------------------------------------
    def _lr_scales(self) -> dict[int, float]:
        """id(param) -> lr multiplier from layer-wise decay (1.0 everywhere when decay == 1)."""
        decay = float(self.hparams.layer_lr_decay)
        scales: dict[int, float] = {}
        head_scale = (self.hparams.head_lr / self.hparams.lr) if self.hparams.head_lr else 1.0
        for p in self.model.head.parameters():
            scales[id(p)] = head_scale
        if decay == 1.0:
            return scales
        named = list(self.model.backbone.named_parameters())
        depth_of = {}
        n_layers = 0
        for name, _ in named:
            m = re.search(r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)\.", name)
            if m:
                n_layers = max(n_layers, int(m.group(1)) + 1)
        for name, p in named:
            m = re.search(r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)\.", name)
            if m:
                depth_of[id(p)] = int(m.group(1)) + 1
            elif "embed" in name:
                depth_of[id(p)] = 0
            else:
                depth_of[id(p)] = n_layers + 1  # final norm and other top-level parameters
        for pid, depth in depth_of.items():
            scales[pid] = decay ** (n_layers + 1 - depth)
        return scales

    def configure_optimizers(self):
        h = self.hparams
        total = 1000
        if self._trainer is not None:
            try:
                total = int(self.trainer.estimated_stepping_batches)
            except Exception:  # noqa: BLE001 - no dataloader yet (e.g. configure in isolation)
                total = 1000
        total = max(1, total if total < 10**9 else 1000)
        optimizer, scheduler = build_optimizer(
            self.model, lr=h.lr, weight_decay=h.weight_decay, betas=tuple(h.betas),
            warmup_steps=h.warmup_steps, total_steps=total, min_lr_ratio=h.min_lr_ratio,
            lr_scales=self._lr_scales(),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """Writes ``predict`` outputs to a TSV in dataset order: ``index, id, pred[, prob_<class>...]``.

    CLI: ``bioseq finetune predict --config X.yaml --ckpt_path best.ckpt --data.predict_file in.tsv
    --trainer.callbacks+=finetune.classifier.PredictionWriter --trainer.callbacks.output=preds.tsv``.
    """

    def __init__(self, output: str = "predictions.tsv"):
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders: take the first
            predictions = predictions[0]
        index = torch.cat([p["index"] for p in predictions]).cpu()
        order = torch.argsort(index)
        preds = torch.cat([p["preds"] for p in predictions]).cpu()[order]
        probs = (
            torch.cat([p["probs"] for p in predictions]).cpu()[order] if "probs" in predictions[0] else None
        )
        index = index[order]
        dm = trainer.datamodule
        data = getattr(dm, "data", {}).get("predict") or getattr(dm, "data", {}).get("test")
        names = getattr(dm, "class_names", None)
        with open(self.output, "w") as fh:
            cols = ["index", "id", "pred"] + (
                [f"prob_{c}" for c in (names or range(probs.shape[1]))] if probs is not None else []
            )
            fh.write("\t".join(map(str, cols)) + "\n")
            for r, i in enumerate(index.tolist()):
                rid = data.ids[i] if data is not None else str(i)
                cells = [str(i), rid, str(preds[r].item())]
                if probs is not None:
                    cells += [f"{v:.6g}" for v in probs[r].tolist()]
                fh.write("\t".join(cells) + "\n")
