"""Embedding engine: sequences in, pooled / per-token embeddings on disk (HDF5 or a directory of .npy).

The engine takes any backbone ``nn.Module`` that follows the bioseq backbone contract
(``forward(input_ids[B, L], attention_mask[B, L]) -> hidden[B, L, H]``, ``hidden_size``; optionally
``output_hidden_states=True`` for ``layers``, and ``supports_state`` / ``allocate_state`` /
``forward(state=)`` for ``long="stream"``) plus a tokenizer with ``encode``, ``cls_id``, ``sep_id``,
``pad_id`` (and ``reverse_complement`` for DNA). It never imports Lightning or ``models``; the CLI wiring in
``bioseq/commands/embed.py`` loads the model.

How a run works (:func:`embed_to_file`):

1. **Pass 1 (cheap, no model):** stream every record once, tokenize it (so invalid characters,
   empty records, over-long records under ``long="error"`` and duplicate ids fail *before* anything
   is written), and keep only ids, lengths and a content fingerprint (blake2b of ids and sequences).
2. **Pass 2:** stream the records again in input order and cut them into *buffers* of at most
   ``buffer_tokens`` tokens / ``buffer_records`` records. Buffer boundaries depend only on the input,
   so a resumed run forms exactly the same buffers and batches (bit-identical output). Inside a
   buffer the records are sorted by length and packed into batches of at most ``batch_tokens``
   padded tokens, right-padded with an attention mask: a causal model never sees the padding and a
   bidirectional backbone masks it, so a row never depends on its batch neighbours. Records longer
   than ``max_length`` go through the *long strategy* (``truncate`` / ``chunk`` / ``stream``).
3. Each finished buffer is committed to a *parts directory* next to the output
   (``.<name>.parts/``): per-token rows are written into a float32 ``.npy`` file, then a small
   ``part-XXXXXX.npz`` (ids, global row index, lengths, pooled rows) is written to a temporary name
   and renamed. A part exists completely or not at all, so a SIGKILL at any moment loses at most one
   buffer; ``resume=True`` skips the committed parts after checking ``manifest.json`` (same inputs,
   model weights and options).
4. **Assembly:** the parts are merged by global row index (duplicates dropped: the same code merges
   per-rank parts written under DDP) into ``<out>.tmp``, which is renamed onto the output; the parts
   directory is then removed. Nothing named like the output exists until the run is complete.

Output layout (HDF5; the ``npy`` format has the same names as files, ``ids.txt`` and
``metadata.json``)::

    /ids              [N] utf-8 strings, input order
    /lengths          [N] int64, residues (or SMILES tokens) in the input record
    /embedded_lengths [N] int64, residues actually embedded (< lengths only under truncation)
    /mean, /max, /first, /last   [N, D] pooled final hidden states (those requested), float32|float16
    /offsets          [N + 1] int64 and /tokens [sum(embedded_lengths), D] (per_token=True):
                      row i's per-residue embeddings are tokens[offsets[i]:offsets[i + 1]]
    /layers/<k>/mean ... /layers/<k>/tokens   the same for hidden_states[k] (``layers``)
    attrs: metadata (model, weights hash, pooling, options, bioseq version, command line, ...,
           ``unk_tokens``: characters embedded as [UNK] under ``unknown="unk"``, ``dropped_duplicates``)

Pooling: ``mean`` and ``max`` run over the residue positions only (the optional ``[CLS]``/``[SEP]``
specials are model input, not pooled); ``first`` and ``last`` are the hidden states of the first
and last token fed to the model (with ``add_eos`` the ``[SEP]`` token, which for a causal model has
seen the whole sequence). Per-token rows are residue positions only, aligned with the sequence.

``rc_average`` (DNA): each sequence and its reverse complement are embedded; every pooled vector is
the average of the same pooling on both strands, and per-token rows average the forward output at
position i with the reverse-strand output at the matching (mirrored) position. For a causal model
the forward strand's state at i summarises the left context and the reverse strand's the right
context, so the per-token average sees both sides; ``last`` averages two whole-sequence summaries.

Long sequences (> ``max_length`` tokens, default the backbone's ``l_max``): ``error`` (default,
raised in pass 1), ``truncate`` (first ``max_length`` tokens; ``/lengths`` keeps the true length),
``chunk`` (windows of ``max_length`` overlapping by ``overlap``; each position is taken from the
window where it has the most left context, i.e. >= ``overlap`` tokens after the first window, so for
a causal model chunking only limits how far back a position can see; pooling is incremental and
per-token rows stream to a file, so a 4.6 Mb chromosome needs O(batch) memory), ``stream``
(exact: the backbone's recurrent state is carried from block to block of the chunked forward;
refused for backbones without ``supports_state``). New strategies subclass :class:`LongStrategy`.

Memory: pass 1 keeps ids and lengths only; pass 2 holds one buffer of records and its pooled rows;
per-token rows go to disk as they are computed. The input is read twice (it must be a file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bioseq
from bioseq.errors import BioseqError, locate
from bioseq.pooling import POOLS, PoolAccumulator, pool_all

LONG_POLICIES = ("error", "truncate", "chunk", "stream")
FORMAT_VERSION = 1


class EmbedError(BioseqError):
    """Bad input or options for the embedding engine (one line, names file/record)."""


# ----------------------------------------------------------------------------------------------
# Input records
# ----------------------------------------------------------------------------------------------


@dataclass
class SequenceRecord:
    """One input sequence. ``line`` is the 1-based line of its header (FASTA) or row (SMILES)."""

    id: str
    seq: str | bytes
    source: str | None = None
    line: int | None = None


def iter_fasta(paths: Sequence[str | os.PathLike], *, dedupe: bool = False) -> Iterator[SequenceRecord]:
    """Stream records from FASTA files (plain, gzip, BGZF) in order, via :func:`bioseq.fasta.read_fasta`.

    Duplicate ids (within or across files) are the caller's business: :func:`embed_to_file` rejects
    them, or with ``dedupe`` keeps the first occurrence.
    """
    from bioseq.fasta import read_fasta

    for path in paths:
        for rec in read_fasta(path, allow_duplicates=dedupe, as_bytes=True):
            yield SequenceRecord(rec.id, rec.seq, str(path), rec.line)


def iter_smiles(path: str | os.PathLike, *, column: str | None = None,
                id_column: str | None = None) -> Iterator[SequenceRecord]:
    """Stream SMILES as records, read by :func:`bioseq.smiles_file.iter_smiles` (text or CSV/TSV)."""
    from bioseq.smiles_file import iter_smiles as read

    for entry in read(path, column=column, id_column=id_column):
        yield SequenceRecord(entry.id, entry.smiles, str(path), entry.line)


# ----------------------------------------------------------------------------------------------
# Options and tokenization
# ----------------------------------------------------------------------------------------------


@dataclass
class EmbedOptions:
    """Everything that changes what is computed (all of it is stored in the output's metadata).

    batch_tokens: padded tokens per forward pass (B * L_max), the memory knob.
    buffer_tokens / buffer_records: records are sorted and committed in buffers of this size; a
        killed run loses at most one buffer. Also bounds memory for pooled results.
    max_length: tokens per forward pass per sequence (None: the backbone's ``l_max`` if it has one,
        else the stream block, 4,096, with ``long="stream"``, else unlimited). ``long`` says what
        happens to longer inputs.
    overlap: chunk-mode tokens of left context each window re-reads from the previous one
        (default max_length // 4).
    """

    pools: tuple[str, ...] = ("mean",)
    per_token: bool = False
    layers: tuple[int, ...] = ()
    max_length: int | None = None
    long: str = "error"
    overlap: int | None = None
    batch_tokens: int = 16384
    max_batch_size: int = 512
    buffer_tokens: int = 1 << 19
    buffer_records: int = 8192
    dtype: str = "float32"
    rc_average: bool = False
    add_cls: bool = False
    add_eos: bool = False
    device: str = "cpu"
    precision: str = "fp32"  # compute: fp32, or bf16 / fp16 autocast (outputs are stored as ``dtype``)

    def validate(self) -> None:
        bad = [p for p in self.pools if p not in POOLS]
        if bad or not self.pools:
            raise EmbedError(f"unknown pooling {bad or '(none)'}; choose from {', '.join(POOLS)}")
        if self.long not in LONG_POLICIES:
            raise EmbedError(f"--long must be one of {', '.join(LONG_POLICIES)}, got '{self.long}'")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise EmbedError(f"--precision must be fp32, bf16 or fp16, got '{self.precision}'")
        if self.dtype not in ("float32", "float16"):
            raise EmbedError(f"--dtype must be float32 or float16, got '{self.dtype}'")
        if self.batch_tokens < 1 or self.buffer_tokens < 1 or self.buffer_records < 1:
            raise EmbedError("--batch-tokens and the buffer sizes must be positive")
        n_special = int(self.add_cls) + int(self.add_eos)
        if self.max_length is not None:
            if self.max_length <= n_special:
                raise EmbedError(f"--max-length {self.max_length} leaves no room for residues")
            if self.long == "chunk" and not 0 <= self.chunk_overlap < self.max_length:
                raise EmbedError(f"--overlap {self.overlap} must be in [0, max_length={self.max_length})")

    @property
    def chunk_overlap(self) -> int:
        if self.overlap is not None:
            return int(self.overlap)
        return (self.max_length or 0) // 4


@dataclass
class TokenPlan:
    """Token ids fed to the model for one record and one strand.

    ``ids`` [T] int64 includes the optional specials; residues are ``ids[start:stop]``.
    ``length`` is the record's residue count before truncation.
    """

    ids: np.ndarray
    start: int
    stop: int
    length: int

    @property
    def n_residues(self) -> int:
        return self.stop - self.start


def backbone_max_length(backbone: nn.Module) -> int | None:
    """The longest input the backbone supports, from its config (``l_max`` for Hyena), else None."""
    config = getattr(backbone, "config", None)
    for name in ("l_max", "max_seq_len", "max_length", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in ``module.state_dict()``."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def pool_batch(h: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor,
               pools: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pool a right-padded batch. h [B, L, D]; lengths [B] tokens fed; residues are [starts, stops).

    Returns pool name -> [B, D] float32 (``bioseq.pooling``; mean/max over the residues only).
    """
    h = h.float()
    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    mask = pos < lengths[:, None]
    residues = (pos >= starts[:, None]) & (pos < stops[:, None])
    return pool_all(h, mask, pools, select=residues)


# ----------------------------------------------------------------------------------------------
# The embedder: batches, long strategies
# ----------------------------------------------------------------------------------------------


class NpyRows:
    """A float32 [rows, D] ``.npy`` file updated in place with pread/pwrite.

    Not memory-mapped on purpose: pages of a mapping count towards the process's resident set, so
    per-token rows of a chromosome would grow RSS by gigabytes; plain file I/O keeps it flat.
    """

    def __init__(self, path: Path, rows: int, dim: int, dtype=np.float32):
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))  # sparse file
        self.offset = int(mm.offset)
        del mm
        self.path, self.dim, self.shape, self.dtype = path, dim, (rows, dim), np.dtype(dtype)
        self.fd = os.open(path, os.O_RDWR)

    def _pos(self, start: int) -> int:
        return self.offset + start * self.dim * self.dtype.itemsize

    def add(self, start: int, values: np.ndarray) -> None:
        """rows[start : start + len(values)] += values"""
        nbytes = values.shape[0] * self.dim * self.dtype.itemsize
        old = np.frombuffer(os.pread(self.fd, nbytes, self._pos(start)), self.dtype).reshape(values.shape)
        self.write(start, old + values)

    def write(self, start: int, values: np.ndarray) -> None:
        """rows[start : start + len(values)] = values"""
        os.pwrite(self.fd, np.ascontiguousarray(values, dtype=self.dtype).tobytes(), self._pos(start))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_npy_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a 2-D ``.npy`` file, read without memory-mapping it."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fh)
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        fh.seek(fh.tell() + start * row * dtype.itemsize)
        data = np.fromfile(fh, dtype=dtype, count=(stop - start) * row)
    return data.reshape((stop - start,) + tuple(shape[1:]))


class RowSink:
    """Where results of one buffer go: pooled rows in memory, per-token rows in float32 files
    (:class:`NpyRows`) or, without ``token_files``, in memory.

    ``groups``: output group names ("" for the final hidden state, "layers/<k>" for layers).
    Strand results are *added* with a weight (1 or 0.5 under ``rc_average``).
    """

    def __init__(self, groups: Sequence[str], pools: Sequence[str], n_rows: int, dim: int,
                 token_offsets: np.ndarray | None, token_files: dict[str, Path] | None = None):
        self.pooled = {g: {p: np.zeros((n_rows, dim), np.float32) for p in pools} for g in groups}
        self.offsets = token_offsets
        self.tokens: dict[str, np.ndarray | NpyRows] = {}
        if token_offsets is not None:
            total = int(token_offsets[-1])
            for g in groups:
                if token_files is None:  # in memory (distributed predict: the writer saves them)
                    self.tokens[g] = np.zeros((total, dim), np.float32)
                else:
                    self.tokens[g] = NpyRows(token_files[g], total, dim)

    def add_pooled(self, group: str, row: int, pooled: dict[str, np.ndarray], weight: float) -> None:
        for p, v in pooled.items():
            self.pooled[group][p][row] += weight * v

    def add_tokens(self, group: str, row: int, residue_pos: int, values: np.ndarray, weight: float,
                   reverse: bool, n_residues: int) -> None:
        """Add ``weight * values`` [n, D] for residues ``residue_pos .. +n`` of ``row``; with ``reverse``
        the values belong to the reverse strand and land mirrored (residue j -> n_residues - 1 - j)."""
        if not self.tokens:
            return
        n = values.shape[0]
        start = int(self.offsets[row]) + (n_residues - residue_pos - n if reverse else residue_pos)
        values = weight * (values[::-1] if reverse else values)
        target = self.tokens[group]
        if isinstance(target, NpyRows):
            target.add(start, values)
        else:
            target[start: start + n] += values

    def close(self) -> None:
        for t in self.tokens.values():
            if isinstance(t, NpyRows):
                t.close()


class Embedder:
    """Runs a backbone over token plans. ``backbone`` must already hold its weights."""

    def __init__(self, backbone: nn.Module, tokenizer, options: EmbedOptions):
        options = dataclasses.replace(options)  # max_length may be resolved below; the caller's stays
        options.validate()
        self.options = options
        self.tokenizer = tokenizer
        self.device = torch.device(options.device)
        self.backbone = backbone.to(self.device).eval()
        self.dim = int(backbone.hidden_size)
        if options.max_length is None:
            options.max_length = backbone_max_length(backbone)
            if options.max_length is None and options.long == "stream":
                # no length limit (Mamba, xLSTM): without one a chromosome would be one forward pass
                # holding every position's activations; stream anything longer than one block instead
                options.max_length = StreamStrategy.block
            options.validate()
        self.groups = [""] + [f"layers/{k}" for k in options.layers]
        if options.rc_average and not hasattr(tokenizer, "reverse_complement"):
            raise EmbedError(f"--rc-average needs a DNA tokenizer (this model's alphabet is "
                             f"'{getattr(tokenizer, 'name', '?')}')")
        self.strategy = make_long_strategy(options.long, self)
        self.on_tokens = None  # optional callback(n_tokens_done) for progress reporting

    def _report(self, n: int) -> None:
        if self.on_tokens is not None and n:
            self.on_tokens(n)

    # -- tokenization ------------------------------------------------------------------------
    def plans(self, rec: SequenceRecord) -> list[TokenPlan]:
        """Tokenize one record into one plan (or two with ``rc_average``); raises on bad input."""
        o = self.options
        try:
            res = np.asarray(self.tokenizer.encode(rec.seq, path=rec.source, record=rec.id), dtype=np.int64)
        except BioseqError:
            raise
        except Exception as err:  # a tokenizer that raises something else: still one line
            raise EmbedError(f"{locate(rec.source, rec.id, rec.line)}: cannot tokenize: {err}") from None
        if res.size == 0:
            raise EmbedError(f"{locate(rec.source, rec.id, rec.line)}: empty sequence")
        length = int(res.size)
        n_special = int(o.add_cls) + int(o.add_eos)
        if o.max_length is not None and length + n_special > o.max_length:
            if o.long == "error":
                raise EmbedError(
                    f"{locate(rec.source, rec.id, rec.line)}: {length + n_special} tokens exceed "
                    f"--max-length {o.max_length}; use --long truncate|chunk (or a larger --max-length)")
            if o.long == "truncate":
                res = res[: o.max_length - n_special]
        strands = [res]
        if o.rc_average:
            strands.append(np.asarray(self.tokenizer.reverse_complement(res), dtype=np.int64))
        out = []
        for ids in strands:
            parts = ([np.array([self.tokenizer.cls_id])] if o.add_cls else []) + [ids] + (
                [np.array([self.tokenizer.sep_id])] if o.add_eos else [])
            full = np.concatenate(parts).astype(np.int64) if len(parts) > 1 else ids
            start = int(o.add_cls)
            out.append(TokenPlan(full, start, start + ids.size, length))
        return out

    def is_long(self, plan: TokenPlan) -> bool:
        m = self.options.max_length
        return m is not None and plan.ids.size > m

    # -- model -------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """[B, L] -> one [B, L, D] tensor per output group (final hidden, then each requested layer)."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        p = self.options.precision
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16,
                             enabled=p != "fp32")
        with amp:
            if not self.options.layers:
                out = self.backbone(input_ids, attention_mask=attention_mask)
                return [(out[0] if isinstance(out, tuple) else out).float()]
            hidden, states = self.backbone(input_ids, attention_mask=attention_mask,
                                           output_hidden_states=True)
        picked = []
        for k in self.options.layers:
            if not -len(states) <= k < len(states):
                raise EmbedError(f"--layers {k} out of range: this model has {len(states)} hidden states "
                                 f"(indices {-len(states)}..{len(states) - 1})")
            picked.append(states[k])
        return [h.float() for h in [hidden] + picked]

    def pad(self, seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        L = max(s.size for s in seqs)
        ids = torch.full((len(seqs), L), int(self.tokenizer.pad_id), dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : s.size] = torch.from_numpy(s)
            mask[i, : s.size] = True
        return ids, mask

    def make_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length (longest first) packed so that B * L_max <= batch_tokens."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches, cur, cur_max = [], [], 0
        for i in order:
            new_max = max(cur_max, lengths[i])
            if cur and (new_max * (len(cur) + 1) > self.options.batch_tokens
                        or len(cur) >= self.options.max_batch_size):
                batches.append(cur)
                cur, new_max = [], lengths[i]
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        return batches

    def run_short(self, items: list[tuple[int, int, TokenPlan]], sink: RowSink, weight: float) -> None:
        """Embed (row, strand, plan) items that fit ``max_length``, batched; results go to ``sink``."""
        for batch in self.make_batches([it[2].ids.size for it in items]):
            plans = [items[i][2] for i in batch]
            ids, mask = self.pad([p.ids for p in plans])
            lengths = mask.sum(1)
            starts = torch.tensor([p.start for p in plans])
            stops = torch.tensor([p.stop for p in plans])
            outs = self.forward(ids, mask)
            for group, h in zip(self.groups, outs):
                dev = h.device
                pooled = pool_batch(h, lengths.to(dev), starts.to(dev), stops.to(dev), self.options.pools)
                pooled = {p: v.cpu().numpy() for p, v in pooled.items()}
                h_cpu = h.float().cpu().numpy() if sink.tokens else None
                for j, i in enumerate(batch):
                    row, strand, plan = items[i]
                    sink.add_pooled(group, row, {p: v[j] for p, v in pooled.items()}, weight)
                    if h_cpu is not None:
                        sink.add_tokens(group, row, 0, h_cpu[j, plan.start: plan.stop], weight,
                                        reverse=strand == 1, n_residues=plan.n_residues)
            self._report(sum(p.ids.size for p in plans))


# ----------------------------------------------------------------------------------------------
# Long-sequence strategies
# ----------------------------------------------------------------------------------------------


class LongStrategy:
    """How a record longer than ``max_length`` is embedded. ``embed`` feeds pooled rows and per-token
    pieces for one strand into ``sink`` (weights as in :class:`RowSink`)."""

    name = "base"

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def embed(self, row: int, strand: int, plan: TokenPlan, sink: RowSink, weight: float) -> None:
        raise NotImplementedError


class ErrorStrategy(LongStrategy):
    name = "error"

    def embed(self, row, strand, plan, sink, weight):  # pragma: no cover - rejected in pass 1
        raise EmbedError(f"sequence of {plan.ids.size} tokens exceeds --max-length")


class ChunkStrategy(LongStrategy):
    """Overlapping windows of ``max_length`` tokens, stride ``max_length - overlap``.

    Window 0 keeps all its positions; window k > 0 drops its first ``overlap`` positions (they are
    better served by window k - 1, where they have more left context), so every position is taken
    from the window giving it the most left context (>= ``overlap`` tokens except at the start).
    Windows are batched up to ``batch_tokens``; pooling is incremental, so memory stays O(batch)
    plus the token ids of the record, whatever its length.
    """

    name = "chunk"

    def windows(self, total: int) -> list[tuple[int, int, int]]:
        """[(start, stop, keep_from)] covering positions 0..total; keep_from is window-local."""
        W = self.embedder.options.max_length
        O = self.embedder.options.chunk_overlap
        S = W - O
        out = [(0, min(W, total), 0)]
        k = 1
        while k * S + O < total:
            start = k * S
            out.append((start, min(start + W, total), O))
            k += 1
        return out

    def embed(self, row, strand, plan, sink, weight):
        e = self.embedder
        W = e.options.max_length
        total = plan.ids.size
        wins = self.windows(total)
        per_batch = max(1, e.options.batch_tokens // W)
        accs = {g: PoolAccumulator(e.options.pools, e.dim) for g in e.groups}
        for b in range(0, len(wins), per_batch):
            group_wins = wins[b: b + per_batch]
            ids, mask = e.pad([plan.ids[s:t] for s, t, _ in group_wins])
            outs = e.forward(ids, mask)
            for group, h in zip(e.groups, outs):
                for j, (s, t, keep) in enumerate(group_wins):
                    piece = h[j, keep: t - s]
                    accs[group].update(piece, s + keep, plan.start, plan.stop, total)
                    if sink.tokens:
                        lo, hi = max(s + keep, plan.start), min(t, plan.stop)
                        if hi > lo:
                            vals = h[j, lo - s: hi - s].float().cpu().numpy()
                            sink.add_tokens(group, row, lo - plan.start, vals, weight,
                                            reverse=strand == 1, n_residues=plan.n_residues)
            e._report(sum(t - s - keep for s, t, keep in group_wins))
        for group, acc in accs.items():
            sink.add_pooled(group, row, acc.result(), weight)


class StreamStrategy(LongStrategy):
    """Exact embedding of any length through the backbone's recurrent state, in constant memory.

    The record is fed in blocks of ``block`` tokens through the chunked forward that starts from a
    state and returns the new one (``forward(ids, state=state) -> (hidden, state)``, the parallel scan
    path), so the result equals one forward over the whole record. Backbones without a state
    (``supports_state`` False, e.g. Hyena) are refused. ``layers`` are not available in this mode.
    """

    name = "stream"
    block = 4096  # tokens per chunked forward (and per pooled / written piece)

    def __init__(self, embedder: Embedder):
        super().__init__(embedder)
        bb = embedder.backbone
        if not getattr(bb, "supports_state", False):
            raise EmbedError(f"--long stream needs a backbone with a recurrent state (supports_state); "
                             f"{type(bb).__name__} has none: use --long chunk or truncate")
        if embedder.options.layers:
            raise EmbedError("--long stream does not support --layers (the state gives the final layer only)")

    @torch.inference_mode()
    def embed(self, row, strand, plan, sink, weight):
        e = self.embedder
        bb = e.backbone
        state = bb.allocate_state(1, device=e.device)
        acc = PoolAccumulator(e.options.pools, e.dim)
        total = plan.ids.size
        ids = torch.from_numpy(plan.ids).to(e.device)[None]
        mask = torch.ones_like(ids, dtype=torch.bool)
        for s in range(0, total, self.block):
            t = min(s + self.block, total)
            h, state = bb(ids[:, s:t], attention_mask=mask[:, s:t], state=state)
            h = h[0].float()
            acc.update(h, s, plan.start, plan.stop, total)
            e._report(t - s)
            lo, hi = max(s, plan.start), min(t, plan.stop)
            if sink.tokens and hi > lo:
                sink.add_tokens("", row, lo - plan.start, h[lo - s: hi - s].cpu().numpy(), weight,
                                reverse=strand == 1, n_residues=plan.n_residues)
        sink.add_pooled("", row, acc.result(), weight)


class TruncateStrategy(LongStrategy):
    name = "truncate"  # plans are already cut to max_length; nothing is long

    def embed(self, row, strand, plan, sink, weight):  # pragma: no cover
        raise AssertionError("truncated plans are never long")


def make_long_strategy(name: str, embedder: Embedder) -> LongStrategy:
    classes = {c.name: c for c in (ErrorStrategy, TruncateStrategy, ChunkStrategy, StreamStrategy)}
    return classes[name](embedder)


# ----------------------------------------------------------------------------------------------
# Parts directory (commit unit) and assembly
# ----------------------------------------------------------------------------------------------


def parts_dir_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: ranks may write the same part
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_part(parts_dir: Path, name: str, *, index: np.ndarray, ids: Sequence[str], lengths: np.ndarray,
               embedded: np.ndarray, pooled: dict[str, dict[str, np.ndarray]], has_tokens: bool,
               tokens: dict[str, np.ndarray] | None = None) -> None:
    """Commit one part: ``<name>.npz`` (written last, atomically) next to its per-token arrays
    ``<name>.<group>.tokens.npy`` (already written in place, or given in memory as ``tokens``).
    Pooled arrays are float32."""
    for g, arr in (tokens or {}).items():
        if isinstance(arr, np.ndarray):
            target = token_file(parts_dir, name, g)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, target)
    arrays = {"index": np.asarray(index, np.int64), "ids": np.asarray(list(ids), dtype=str),
              "lengths": np.asarray(lengths, np.int64), "embedded": np.asarray(embedded, np.int64),
              "has_tokens": np.asarray(has_tokens)}
    for g, pools in pooled.items():
        for p, v in pools.items():
            arrays[f"pool:{g}:{p}"] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write_bytes(parts_dir / f"{name}.npz", buf.getvalue())


def token_file(parts_dir: Path, name: str, group: str) -> Path:
    return parts_dir / f"{name}.{group.replace('/', '_') or 'final'}.tokens.npy"


def list_parts(parts_dir: Path) -> list[str]:
    return sorted(p.name[:-4] for p in parts_dir.glob("*.npz"))


def _h5_name(group: str, leaf: str) -> str:
    return f"{group}/{leaf}" if group else leaf


def assemble(parts_dir: Path, out: str | os.PathLike, metadata: dict, *, fmt: str = "h5",
             dtype: str = "float32", n_rows: int | None = None) -> None:
    """Merge every committed part in ``parts_dir`` into ``out`` by global row index.

    Duplicate indices (padding added by a distributed sampler, or a part re-run) keep the first
    occurrence; rows must cover 0..N-1 exactly (N = ``n_rows`` when given). Writes ``<out>.tmp`` and
    renames it onto ``out``; the parts directory is left for the caller to delete. When anything fails,
    ``<out>.tmp`` is removed (the output is then untouched).
    """
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    try:
        _assemble(parts_dir, out, metadata, fmt=fmt, dtype=dtype, n_rows=n_rows)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _assemble(parts_dir: Path, out: str | os.PathLike, metadata: dict, *, fmt: str = "h5",
              dtype: str = "float32", n_rows: int | None = None) -> None:
    names = list_parts(parts_dir)
    if not names:
        raise EmbedError(f"{parts_dir}: no completed parts to assemble")
    loaded = [np.load(parts_dir / f"{n}.npz", allow_pickle=False) for n in names]
    all_index = np.concatenate([p["index"] for p in loaded])
    uniq, first = np.unique(all_index, return_index=True)
    N = n_rows if n_rows is not None else int(uniq.size)
    if uniq.size != N or (N and (uniq[0] != 0 or uniq[-1] != N - 1)):
        missing = sorted(set(range(N)) - set(uniq.tolist()))[:5]
        raise EmbedError(f"{parts_dir}: parts cover {uniq.size} of {N} rows (missing e.g. {missing})")
    part_of = np.concatenate([np.full(p["index"].size, k) for k, p in enumerate(loaded)])
    pos_in = np.concatenate([np.arange(p["index"].size) for p in loaded])
    src_part, src_pos = part_of[first], pos_in[first]  # source of global row r (uniq == arange(N))

    def gather(key: str) -> np.ndarray:
        sample = loaded[0][key]
        dtype = object if sample.dtype.kind == "U" else sample.dtype  # ids: parts differ in width
        out_arr = np.empty((N,) + sample.shape[1:], dtype=dtype)
        for k, p in enumerate(loaded):
            sel = src_part == k
            if sel.any():
                out_arr[sel] = p[key][src_pos[sel]]
        return out_arr

    ids = gather("ids")
    lengths, embedded = gather("lengths"), gather("embedded")
    pool_keys = [k for k in loaded[0].files if k.startswith("pool:")]
    has_tokens = bool(loaded[0]["has_tokens"])
    groups = sorted({k.split(":")[1] for k in pool_keys})
    offsets = np.zeros(N + 1, np.int64)
    np.cumsum(embedded, out=offsets[1:])
    out = Path(out)
    np_dtype = np.dtype(dtype)
    if fmt == "h5":
        import h5py

        tmp = out.with_name(out.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("lengths", data=lengths)
            f.create_dataset("embedded_lengths", data=embedded)
            for key in pool_keys:
                _, g, p = key.split(":")
                f.create_dataset(_h5_name(g, p), data=gather(key).astype(np_dtype))
            if has_tokens:
                f.create_dataset("offsets", data=offsets)
                for g in groups:
                    D = loaded[0][f"pool:{g}:{pool_keys[0].split(':')[2]}"].shape[1]
                    n_tok = int(offsets[-1])
                    ds = f.create_dataset(_h5_name(g, "tokens"), shape=(n_tok, D), dtype=np_dtype,
                                          chunks=(max(1, min(8192, n_tok)), D) if n_tok else None)
                    _copy_tokens(parts_dir, names, loaded, g, src_part, src_pos, offsets,
                                 lambda a, b, x, ds=ds: ds.__setitem__(slice(a, b), x), np_dtype)
            for key, value in metadata.items():
                if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
                    f.attrs[key] = value
                else:
                    text = value if isinstance(value, str) else json.dumps(value)
                    f.attrs.create(key, text, dtype=h5py.string_dtype())
        os.replace(tmp, out)
    elif fmt == "npy":
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        np.save(tmp / "lengths.npy", lengths)
        np.save(tmp / "embedded_lengths.npy", embedded)
        for key in pool_keys:
            _, g, p = key.split(":")
            (tmp / g).mkdir(parents=True, exist_ok=True)
            np.save(tmp / _h5_name(g, f"{p}.npy"), gather(key).astype(np_dtype))
        if has_tokens:
            np.save(tmp / "offsets.npy", offsets)
            for g in groups:
                D = loaded[0][f"pool:{g}:{pool_keys[0].split(':')[2]}"].shape[1]
                rows = NpyRows(tmp / _h5_name(g, "tokens.npy"), int(offsets[-1]), D, np_dtype)
                try:
                    _copy_tokens(parts_dir, names, loaded, g, src_part, src_pos, offsets,
                                 lambda a, b, x, rows=rows: rows.write(a, x), np_dtype)
                finally:
                    rows.close()
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    else:
        raise EmbedError(f"unknown output format '{fmt}' (h5 or npy)")


def _copy_tokens(parts_dir, names, loaded, group, src_part, src_pos, offsets, write, np_dtype,
                 block_rows: int = 1 << 16) -> None:
    """Copy per-token rows from the parts' files to the output in global row order, in runs of
    consecutive rows and blocks of ``block_rows`` token rows (bounded memory, no mappings).
    ``write(start, stop, rows)`` stores one block of output rows."""
    for k, name in enumerate(names):
        rows = np.nonzero(src_part == k)[0]
        if rows.size == 0:
            continue
        part_emb = loaded[k]["embedded"]
        part_off = np.zeros(part_emb.size + 1, np.int64)
        np.cumsum(part_emb, out=part_off[1:])
        src = token_file(parts_dir, name, group)
        # runs where both global rows and part positions are consecutive
        pos = src_pos[rows]
        breaks = np.nonzero((np.diff(rows) != 1) | (np.diff(pos) != 1))[0] + 1
        for run_rows, run_pos in zip(np.split(rows, breaks), np.split(pos, breaks)):
            g0, g1 = int(offsets[run_rows[0]]), int(offsets[run_rows[-1] + 1])
            s0 = int(part_off[run_pos[0]])
            for a in range(0, g1 - g0, block_rows):
                b = min(a + block_rows, g1 - g0)
                block = read_npy_rows(src, s0 + a, s0 + b).astype(np_dtype)
                write(g0 + a, g0 + b, block)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


@dataclass
class ScanResult:
    """What pass 1 learned: ids (input order, after dedupe), residue lengths, total tokens fed, and
    how many characters the tokenizer mapped to [UNK] (``--unknown unk``)."""

    ids: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    tokens: int = 0
    dropped_duplicates: int = 0
    fingerprint: str = ""
    unk_tokens: int = 0


def scan(records: Iterable[SequenceRecord], embedder: Embedder, *, dedupe: bool = False) -> ScanResult:
    """Pass 1: validate and tokenize every record (raises before anything is written)."""
    out = ScanResult()
    seen: dict[str, str] = {}
    h = hashlib.blake2b(digest_size=16)
    unk_before = getattr(embedder.tokenizer, "unk_count", 0)  # pass 2 encodes again: count pass 1 only
    for rec in _dedupe(records, dedupe, out, seen):
        plans = embedder.plans(rec)
        out.ids.append(rec.id)
        out.lengths.append(plans[0].length)
        out.tokens += sum(p.ids.size for p in plans)
        seq = rec.seq if isinstance(rec.seq, bytes) else rec.seq.encode()
        h.update(rec.id.encode() + b"\0" + seq + b"\0")
    out.fingerprint = h.hexdigest()
    out.unk_tokens = getattr(embedder.tokenizer, "unk_count", 0) - unk_before
    if not out.ids:
        raise EmbedError("no input records")
    return out


def _dedupe(records: Iterable[SequenceRecord], dedupe: bool, stats: ScanResult | None,
            seen: dict[str, str]) -> Iterator[SequenceRecord]:
    for rec in records:
        where = seen.get(rec.id)
        if where is not None:
            if not dedupe:
                raise EmbedError(f"{locate(rec.source, rec.id, rec.line)}: duplicate id (first seen in "
                                 f"{where}); ids must be unique, or pass --dedupe to keep the first")
            if stats is not None:
                stats.dropped_duplicates += 1
            continue
        seen[rec.id] = locate(rec.source, line=rec.line) or "input"
        yield rec


def iter_buffers(records: Iterable[SequenceRecord], embedder: Embedder,
                 options: EmbedOptions) -> Iterator[list[tuple[SequenceRecord, list[TokenPlan]]]]:
    """Cut the (deduplicated) record stream into deterministic buffers."""
    buf, tokens = [], 0
    for rec in records:
        plans = embedder.plans(rec)
        buf.append((rec, plans))
        tokens += sum(p.ids.size for p in plans)
        if tokens >= options.buffer_tokens or len(buf) >= options.buffer_records:
            yield buf
            buf, tokens = [], 0
    if buf:
        yield buf


@dataclass
class BufferResult:
    """Embeddings of one buffer, rows in buffer order. ``tokens``: group -> [sum(embedded), D] float32
    (:class:`NpyRows` files when computed into a parts directory, else in memory), empty without
    per_token."""

    index: np.ndarray
    ids: list[str]
    lengths: np.ndarray
    embedded: np.ndarray
    pooled: dict[str, dict[str, np.ndarray]]
    tokens: dict[str, np.ndarray]
    name: str = ""  # part name, set by the distributed predict step


def compute_buffer(embedder: Embedder, buffer: list[tuple[SequenceRecord, list[TokenPlan]]],
                   index: np.ndarray, token_files: dict[str, Path] | None = None) -> BufferResult:
    """Embed one buffer of (record, plans); ``index`` [n] are the rows' global positions."""
    o = embedder.options
    n = len(buffer)
    embedded = np.array([plans[0].n_residues for _, plans in buffer], np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(embedded, out=offsets[1:])
    sink = RowSink(embedder.groups, o.pools, n, embedder.dim, offsets if o.per_token else None, token_files)
    weight = 0.5 if o.rc_average else 1.0
    short = []
    for row, (_, plans) in enumerate(buffer):
        for strand, plan in enumerate(plans):
            if embedder.is_long(plan):
                embedder.strategy.embed(row, strand, plan, sink, weight)
            else:
                short.append((row, strand, plan))
    if short:
        embedder.run_short(short, sink, weight)
    sink.close()
    lengths = np.array([p[0].length for _, p in buffer], np.int64)
    return BufferResult(np.asarray(index, np.int64), [r.id for r, _ in buffer], lengths, embedded,
                        sink.pooled, sink.tokens)


def embed_sequences(embedder: Embedder, sequences: Sequence[str], *, source: str = "<memory>"
                    ) -> dict[str, np.ndarray]:
    """Pooled embeddings of in-memory sequences, in input order: pool name -> float32 ``[N, H]``.

    The same batching, pooling and long-sequence handling as a file run (records are named by their
    position, ``source`` names them in errors), without an output file.
    """
    o = embedder.options
    n = len(sequences)
    out = {p: np.zeros((n, embedder.dim), np.float32) for p in o.pools}
    for lo in range(0, n, o.buffer_records):
        hi = min(lo + o.buffer_records, n)
        records = [SequenceRecord(str(i), sequences[i], source, i + 1) for i in range(lo, hi)]
        result = compute_buffer(embedder, [(r, embedder.plans(r)) for r in records], np.arange(lo, hi))
        for p in o.pools:
            out[p][lo:hi] = result.pooled[""][p]
    return out


def commit_part(parts_dir: Path, name: str, result: BufferResult, per_token: bool) -> None:
    write_part(parts_dir, name, index=result.index, ids=result.ids, lengths=result.lengths,
               embedded=result.embedded, pooled=result.pooled, has_tokens=per_token, tokens=result.tokens)


def embed_buffer(embedder: Embedder, buffer: list[tuple[SequenceRecord, list[TokenPlan]]], parts_dir: Path,
                 name: str, row0: int | np.ndarray) -> None:
    """Embed one buffer and commit it as part ``name``; global rows are ``row0 + i`` (or an array).
    Per-token rows go straight into files in ``parts_dir`` (memory stays bounded)."""
    n = len(buffer)
    index = row0 + np.arange(n) if np.isscalar(row0) else np.asarray(row0)
    files = ({g: token_file(parts_dir, name, g) for g in embedder.groups}
             if embedder.options.per_token else None)
    result = compute_buffer(embedder, buffer, index, files)
    commit_part(parts_dir, name, result, embedder.options.per_token)
    result.tokens.clear()


def _progress(total: int, n_records: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, disable=not enabled,
                desc=f"embed 0/{n_records} seq", file=sys.stderr, smoothing=0.1)


def run_metadata(metadata: dict | None, embedder: Embedder, fmt: str, scanned: ScanResult) -> dict:
    """The metadata stored with the output: the caller's (model spec, weights hash, command line...)
    plus the options, storage dtype, weights/tokenizer/input fingerprints and versions."""
    o = embedder.options
    meta = dict(metadata or {})
    meta.update({
        "format_version": FORMAT_VERSION, "bioseq_version": bioseq.__version__,
        "options": dataclasses.asdict(o), "format": fmt,
        "pooling": list(o.pools), "dtype": o.dtype, "max_length": o.max_length,
        "long": o.long, "overlap": o.chunk_overlap if o.long == "chunk" else None,
        "layers": list(o.layers), "per_token": o.per_token, "rc_average": o.rc_average,
        "add_cls": o.add_cls, "add_eos": o.add_eos,
        "d_model": embedder.dim, "state_sha256": state_dict_sha256(embedder.backbone),
        "tokenizer": getattr(embedder.tokenizer, "name", type(embedder.tokenizer).__name__),
        "input_fingerprint": scanned.fingerprint, "n_records": len(scanned.ids),
        "dropped_duplicates": scanned.dropped_duplicates, "unk_tokens": scanned.unk_tokens,
    })
    return meta


def run_fingerprint(meta: dict) -> dict:
    """What must match for ``--resume`` to reuse committed parts (JSON-normalised): options (device
    aside: a run may resume on another device), format, weights, inputs, tokenizer, model spec."""
    check = {k: meta.get(k) for k in ("options", "format", "state_sha256", "input_fingerprint", "n_records",
                                      "tokenizer", "format_version", "model")}
    check["options"] = {k: v for k, v in dict(check["options"]).items() if k != "device"}
    return json.loads(json.dumps(check, sort_keys=True))


def prepare_parts_dir(parts_dir: Path, check: dict, resume: bool) -> None:
    """Fresh run: (re)create ``parts_dir`` with ``manifest.json``. Resume: verify the manifest."""
    manifest_path = parts_dir / "manifest.json"
    if resume and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        diff = [k for k in check if old.get(k) != check[k]]
        if diff:
            raise EmbedError(f"--resume: {parts_dir} was written for different "
                             f"{', '.join(diff)}; rerun without --resume to start over")
        return
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir()
    _atomic_write_bytes(manifest_path, json.dumps(check, sort_keys=True).encode())


def embed_to_file(records: Callable[[], Iterable[SequenceRecord]], out: str | os.PathLike,
                  backbone: nn.Module, tokenizer, options: EmbedOptions, *, fmt: str = "h5",
                  resume: bool = False, overwrite: bool = False, dedupe: bool = False,
                  metadata: dict | None = None, progress: bool = True) -> dict:
    """Embed every record into ``out`` (see the module docstring). Returns the metadata written.

    ``records`` is a zero-argument callable returning a fresh iterator (the input is read twice:
    pass 1 validates, pass 2 embeds) — e.g. ``lambda: iter_fasta(paths)``.
    """
    out = Path(out)
    if not callable(records):
        raise TypeError("records must be a callable returning a fresh iterator (the input is read twice)")
    if out.exists() and not overwrite:
        raise EmbedError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise EmbedError(f"{out.parent}: output directory does not exist")
    embedder = Embedder(backbone, tokenizer, options)
    options = embedder.options  # with max_length resolved from the backbone
    t0 = time.time()
    scanned = scan(records(), embedder, dedupe=dedupe)
    meta = run_metadata(metadata, embedder, fmt, scanned)
    parts_dir = parts_dir_for(out)
    prepare_parts_dir(parts_dir, run_fingerprint(meta), resume)
    done = set(list_parts(parts_dir))
    bar = _progress(scanned.tokens, len(scanned.ids), progress)
    embedder.on_tokens = bar.update
    row = 0
    stream = _dedupe(records(), dedupe, None, {})
    try:
        for k, buffer in enumerate(iter_buffers(stream, embedder, options)):
            name = f"part-{k:06d}"
            ids = [r.id for r, _ in buffer]
            if ids != scanned.ids[row: row + len(ids)]:
                raise EmbedError("the input changed between passes (ids differ)")
            if name in done:
                committed = np.load(parts_dir / f"{name}.npz", allow_pickle=False)
                if committed["ids"].tolist() != ids:
                    raise EmbedError(f"--resume: {parts_dir / name}.npz holds other records; rerun "
                                     f"without --resume")
                bar.update(sum(p.ids.size for _, plans in buffer for p in plans))
            else:
                embed_buffer(embedder, buffer, parts_dir, name, row)
            row += len(buffer)
            rate = row / max(time.time() - t0, 1e-9)
            bar.set_description(f"embed {row}/{len(scanned.ids)} seq ({rate:.1f} seq/s)")
    finally:
        bar.close()
    meta["elapsed_s"] = round(time.time() - t0, 3)
    assemble(parts_dir, out, meta, fmt=fmt, dtype=options.dtype, n_rows=len(scanned.ids))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return meta


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_embeddings(path: str | os.PathLike, *, tokens: bool = True) -> dict:
    """Read an embeddings file (HDF5) or directory (npy format) written by :func:`embed_to_file`.

    Returns ``{"ids": list[str], "lengths": int64[N], "embedded_lengths": int64[N],
    "<pool>": [N, D] for each pool present (mean, max, first, last), "offsets": int64[N+1] and
    "tokens": [sum, D] when stored and ``tokens`` is true, "layers": {k: {"mean": ..., ...}},
    "metadata": dict}``. npy ``tokens`` are memory-mapped (read-only).
    """
    path = Path(path)
    if not path.exists():
        raise EmbedError(f"{path}: no such embeddings file")
    out: dict = {"layers": {}}
    if path.is_dir():
        meta_file = path / "metadata.json"
        if not meta_file.exists():
            raise EmbedError(f"{path}: not an embeddings directory (no metadata.json)")
        out["metadata"] = json.loads(meta_file.read_text())
        out["ids"] = (path / "ids.txt").read_text(encoding="utf-8").splitlines()

        def load_dir(d: Path, target: dict):
            for p in POOLS:
                if (d / f"{p}.npy").exists():
                    target[p] = np.load(d / f"{p}.npy")
            if tokens and (d / "tokens.npy").exists():
                target["tokens"] = np.load(d / "tokens.npy", mmap_mode="r")

        for name in ("lengths", "embedded_lengths", "offsets"):
            if (path / f"{name}.npy").exists():
                out[name] = np.load(path / f"{name}.npy")
        load_dir(path, out)
        if (path / "layers").is_dir():
            for d in sorted((path / "layers").iterdir()):
                out["layers"][int(d.name)] = {}
                load_dir(d, out["layers"][int(d.name)])
        return out
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise EmbedError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        if "ids" not in f:
            raise EmbedError(f"{path}: not a bioseq embeddings file (no /ids)")
        meta = {}
        for k, v in f.attrs.items():
            v = v.decode() if isinstance(v, bytes) else v
            if isinstance(v, str) and (v[:1] in "[{" or v == "null"):
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            meta[k] = v.item() if isinstance(v, np.generic) else v
        out["metadata"] = meta
        out["ids"] = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        for name in ("lengths", "embedded_lengths", "offsets"):
            if name in f:
                out[name] = f[name][()]

        def load_group(g, target: dict):
            for p in POOLS:
                if p in g:
                    target[p] = g[p][()]
            if tokens and "tokens" in g:
                target["tokens"] = g["tokens"][()]

        load_group(f, out)
        if "layers" in f:
            for k in sorted(f["layers"], key=int):
                out["layers"][int(k)] = {}
                load_group(f["layers"][k], out["layers"][int(k)])
    return out
