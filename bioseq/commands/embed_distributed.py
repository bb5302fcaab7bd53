"""Data-parallel ``bioseq embed`` over several GPUs / nodes with Lightning ``Trainer.predict``.

Wiring only (imports Lightning); the computation is :mod:`bioseq.embed`. The unit of work is the
same deterministic *buffer* as in the single-process engine (records cut by token count in input
order), so a distributed run computes exactly the same batches. Each dataset item is one buffer:
``(buffer_number, global row indices, records)``. Lightning's ``DistributedSampler`` hands buffers
to ranks and pads the last round by repeating buffers; :class:`PartWriter` (a
``BasePredictionWriter``) commits each result as ``part-<buffer>.npz`` in the shared parts
directory, keyed by the rows' global ``index``. Rank 0 then merges the parts by index with
:func:`bioseq.embed.assemble`, which keeps one copy of any duplicated row, so rows are never
reordered or duplicated. Parts already committed (``--resume``) are skipped by every rank.

Records are held in memory in this mode (each rank reads the input once); the single-process path
streams. The parts directory must be on a filesystem every rank sees.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from bioseq.embed import (
    BufferResult,
    Embedder,
    EmbedError,
    EmbedOptions,
    _dedupe,
    assemble,
    commit_part,
    compute_buffer,
    iter_buffers,
    list_parts,
    parts_dir_for,
    prepare_parts_dir,
    run_fingerprint,
    run_metadata,
    scan,
)


class BufferDataset(torch.utils.data.Dataset):
    """Item b = ``{"buffer": b, "index": LongTensor[n], "records": [SequenceRecord]}`` (input order)."""

    def __init__(self, records, embedder: Embedder, options: EmbedOptions, dedupe: bool = False):
        self.items = []
        row = 0
        for b, buf in enumerate(iter_buffers(_dedupe(records, dedupe, None, {}), embedder, options)):
            recs = [r for r, _ in buf]
            self.items.append({"buffer": b, "index": torch.arange(row, row + len(recs)), "records": recs})
            row += len(recs)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate_one(batch: list[dict]) -> dict:
    assert len(batch) == 1, "one buffer per step"
    return batch[0]


class EmbedPredictModule(L.LightningModule):
    """``predict_step(buffer) -> BufferResult`` (None when the buffer's part is already committed)."""

    def __init__(self, backbone, tokenizer, options: EmbedOptions, parts_dir: Path, prepare=None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.options = options
        self.parts_dir = Path(parts_dir)
        self.prepare = prepare  # callable(trainer) run on every rank before the first step
        self._embedder: Embedder | None = None

    def on_predict_start(self) -> None:
        if self.prepare is not None:
            self.prepare(self.trainer)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            opts = EmbedOptions(**{**self.options.__dict__, "device": str(self.device)})
            self._embedder = Embedder(self.backbone, self.tokenizer, opts)
        return self._embedder

    def predict_step(self, batch: dict, batch_idx: int = 0) -> BufferResult | None:
        name = f"part-{batch['buffer']:06d}"
        if (self.parts_dir / f"{name}.npz").exists():
            return None
        e = self.embedder
        buffer = [(r, e.plans(r)) for r in batch["records"]]
        result = compute_buffer(e, buffer, batch["index"].cpu().numpy())
        result.name = name
        return result


class PartWriter(BasePredictionWriter):
    """Commits every prediction as ``part-<buffer>.npz`` (+ per-token ``.npy``) keyed by global index."""

    def __init__(self, parts_dir: Path, per_token: bool):
        super().__init__(write_interval="batch")
        self.parts_dir = Path(parts_dir)
        self.per_token = per_token
        self.written: list[str] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0):
        if prediction is None:
            return
        commit_part(self.parts_dir, prediction.name, prediction, self.per_token)
        self.written.append(prediction.name)


def embed_distributed(records, out, backbone, tokenizer, options: EmbedOptions, *, fmt="h5", resume=False,
                      overwrite=False, dedupe=False, metadata=None, devices=1, num_nodes=1,
                      accelerator: str | None = None, strategy: str | None = None,
                      progress: bool = True) -> dict | None:
    """Like :func:`bioseq.embed.embed_to_file`, data parallel. Returns the metadata on global rank 0."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EmbedError(f"{out} exists; pass --overwrite to replace it")
    if accelerator is None:
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    embedder = Embedder(backbone, tokenizer, EmbedOptions(**{**options.__dict__, "device": "cpu"}))
    options = EmbedOptions(**{**embedder.options.__dict__, "device": options.device})  # resolved max_length
    scanned = scan(records(), embedder, dedupe=dedupe)
    parts_dir = parts_dir_for(out)
    meta = run_metadata(metadata, embedder, fmt, scanned)
    meta["options"]["device"] = options.device
    dataset = BufferDataset(records(), embedder, options, dedupe=dedupe)
    writer = PartWriter(parts_dir, options.per_token)

    def prepare(trainer) -> None:
        if trainer.is_global_zero:
            prepare_parts_dir(parts_dir, run_fingerprint(meta), resume)
        trainer.strategy.barrier("bioseq-embed-prepare")

    module = EmbedPredictModule(backbone, tokenizer, options, parts_dir, prepare=prepare)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy or ("ddp" if devices * num_nodes > 1 else "auto"),
                        callbacks=[writer], logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_collate_one)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier("bioseq-embed-written")
    if not trainer.is_global_zero:
        return None
    meta.update({"world_size": trainer.world_size, "elapsed_s": round(time.time() - t0, 3),
                 "parts": len(list_parts(parts_dir))})
    assemble(parts_dir, out, meta, fmt=fmt, dtype=options.dtype, n_rows=len(scanned.ids))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return meta


__all__ = ["BufferDataset", "EmbedPredictModule", "PartWriter", "embed_distributed"]
