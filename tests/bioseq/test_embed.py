"""Tests of the embedding engine (bioseq/embed.py) and the `bioseq embed` command.

Engine tests use a tiny causal GRU stand-in backbone (padding would matter if the engine padded on
the left or pooled over padding) and a minimal DNA tokenizer; the real HyenaDNA / tokenizers are
used where marked (skipped until those modules exist).
"""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bioseq.embed import (
    ChunkStrategy,
    Embedder,
    EmbedError,
    EmbedOptions,
    PoolAccumulator,
    SequenceRecord,
    assemble,
    embed_buffer,
    embed_to_file,
    iter_fasta,
    iter_smiles,
    parts_dir_for,
    read_embeddings,
)
from bioseq.errors import BioseqError
from bioseq.models import Backbone

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# stand-ins
# ----------------------------------------------------------------------------------------------


class FakeDnaTokenizer:
    """Specials 0..6, A C G T N = 7..11 (the bioseq DNA vocabulary), lowercase folded."""

    name = "dna"
    cls_id, sep_id, pad_id = 0, 1, 4

    def __init__(self):
        self.lut = np.full(256, -1, np.int64)
        for i, c in enumerate("ACGTN"):
            self.lut[ord(c)] = self.lut[ord(c.lower())] = 7 + i
        self.comp = np.arange(16)
        self.comp[[7, 8, 9, 10]] = [10, 9, 8, 7]

    def encode(self, seq, *, add_eos=False, add_cls=False, path=None, record=None):
        b = np.frombuffer(seq if isinstance(seq, bytes) else seq.encode(), np.uint8)
        ids = self.lut[b]
        bad = np.nonzero(ids < 0)[0]
        if bad.size:
            raise BioseqError(f"{path}: record '{record}' position {bad[0] + 1}: invalid character "
                              f"{chr(b[bad[0]])!r}")
        return ids

    def reverse_complement(self, ids):
        return self.comp[ids[::-1]]


class TinyCausal(Backbone):
    """Causal stand-in backbone: embedding -> residual GRUs -> LayerNorm. [B, L] -> [B, L, D]."""

    arch = "tiny"

    def __init__(self, d: int = 8, n_layer: int = 2, vocab: int = 16, l_max: int | None = None):
        super().__init__(SimpleNamespace(arch="tiny", alphabet="dna", vocab_size=vocab, l_max=l_max,
                                         d_model=d))
        self.d_model = d
        self.embed_tokens = nn.Embedding(vocab, d)
        self.grus = nn.ModuleList(nn.GRU(d, d, batch_first=True) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d)

    @property
    def max_length(self):
        return self.config.l_max

    def forward(self, input_ids, attention_mask=None, inputs_embeds=None, output_hidden_states=False,
                state=None):
        self.check_state_arg(state)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        states, new = [x], []
        for i, g in enumerate(self.grus):
            y, s = g(x, None if state is None else state[i])
            x = x + y
            states.append(x)
            new.append(s)
        h = self.norm(x)
        out = (h, tuple(states)) if output_hidden_states else (h,)
        out = out + (new,) if state is not None else out
        return out if len(out) > 1 else h


class TinyStepper(TinyCausal):
    """The same model with a recurrent state: ``step`` and ``forward(state=)`` reproduce ``forward``."""

    supports_state = True

    def allocate_state(self, batch_size, device=None):
        return [torch.zeros(1, batch_size, self.d_model, device=device) for _ in self.grus]

    def step(self, input_ids, state):
        x = self.embed_tokens(input_ids)[:, None]  # [B, 1, D]
        new = []
        for g, s in zip(self.grus, state):
            y, s = g(x, s)
            x = x + y
            new.append(s)
        return self.norm(x)[:, 0], new


def random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def records_of(seqs, prefix="s"):
    recs = [SequenceRecord(f"{prefix}{i}", s, "mem.fa", 2 * i + 1) for i, s in enumerate(seqs)]
    return lambda: iter(recs)


def alone(model, tok, seq, **kw):
    """Reference: the sequence alone, no padding, straight through the model."""
    opts = EmbedOptions(**kw)
    ids = tok.encode(seq)
    if opts.add_eos:
        ids = np.append(ids, tok.sep_id)
    with torch.no_grad():
        h = model(torch.from_numpy(ids)[None])[0]
    return h


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCausal().eval()


@pytest.fixture
def tok():
    return FakeDnaTokenizer()


# ----------------------------------------------------------------------------------------------
# engine
# ----------------------------------------------------------------------------------------------


def test_batch_invariance_and_input_order_with_standin(tmp_path, model, tok):
    rng = np.random.default_rng(1)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(1, 120, 50)]
    out = tmp_path / "e.h5"
    # small buffers and batches: many batches, several parts, mixed neighbours
    opts = EmbedOptions(pools=("mean", "max", "first", "last"), per_token=True, batch_tokens=400,
                        buffer_tokens=1200)
    embed_to_file(records_of(seqs), out, model, tok, opts, progress=False)
    r = read_embeddings(out)
    assert r["ids"] == [f"s{i}" for i in range(50)]
    assert r["lengths"].tolist() == [len(s) for s in seqs]
    assert r["mean"].shape == (50, 8) and r["mean"].dtype == np.float32
    for i, s in enumerate(seqs):
        h = alone(model, tok, s)
        np.testing.assert_allclose(r["mean"][i], h.mean(0), atol=1e-5)
        np.testing.assert_allclose(r["max"][i], h.max(0).values, atol=1e-5)
        np.testing.assert_allclose(r["first"][i], h[0], atol=1e-5)
        np.testing.assert_allclose(r["last"][i], h[-1], atol=1e-5)
        np.testing.assert_allclose(r["tokens"][r["offsets"][i]: r["offsets"][i + 1]], h, atol=1e-5)


def test_left_padding_would_be_caught(model, tok):
    """Guard that the stand-in is padding-sensitive: left padding changes the output."""
    ids = torch.from_numpy(tok.encode("ACGTACGTTT"))[None]
    padded = torch.cat([torch.full((1, 5), tok.pad_id), ids], 1)
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, -1], model(padded)[0, -1], atol=1e-4)


def test_batches_respect_token_budget(model, tok):
    e = Embedder(model, tok, EmbedOptions(batch_tokens=100, max_batch_size=8))
    lengths = [5, 50, 7, 30, 30, 99, 1, 12, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    batches = e.make_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1
        assert len(b) <= 8


def test_specials_layers_and_float16(tmp_path, model, tok):
    seqs = ["ACGTTGCA", "GGGAAACCCTTT", "A"]
    out = tmp_path / "e.h5"
    opts = EmbedOptions(pools=("mean", "last"), add_eos=True, layers=(0, -1), dtype="float16", per_token=True)
    embed_to_file(records_of(seqs), out, model, tok, opts, progress=False)
    r = read_embeddings(out)
    assert r["mean"].dtype == np.float16
    assert sorted(r["layers"]) == [-1, 0]
    for i, s in enumerate(seqs):
        ids = torch.from_numpy(np.append(tok.encode(s), tok.sep_id))[None]
        with torch.no_grad():
            h, states = model(ids, output_hidden_states=True)
        # mean over residues only (the [SEP] is not pooled), last = the [SEP] token
        np.testing.assert_allclose(r["mean"][i], h[0, :-1].mean(0), atol=2e-3)
        np.testing.assert_allclose(r["last"][i], h[0, -1], atol=2e-3)
        np.testing.assert_allclose(r["layers"][0]["mean"][i], states[0][0, :-1].mean(0), atol=2e-3)
        np.testing.assert_allclose(r["layers"][-1]["mean"][i], states[-1][0, :-1].mean(0), atol=2e-3)
        tokens = r["tokens"][r["offsets"][i]: r["offsets"][i + 1]]
        assert tokens.shape == (len(s), 8)
        np.testing.assert_allclose(tokens, h[0, :-1], atol=2e-3)
    assert r["metadata"]["pooling"] == ["mean", "last"] and r["metadata"]["dtype"] == "float16"


def test_rc_average(tmp_path, model, tok):
    seqs = ["ACGTTGCAAAC", "GGGAAACCCTTTA"]
    out = tmp_path / "e.h5"
    opts = EmbedOptions(pools=("mean", "last"), rc_average=True, per_token=True)
    embed_to_file(records_of(seqs), out, model, tok, opts, progress=False)
    r = read_embeddings(out)
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    for i, s in enumerate(seqs):
        rc = "".join(comp[c] for c in reversed(s))
        f, b = alone(model, tok, s), alone(model, tok, rc)
        np.testing.assert_allclose(r["mean"][i], (f.mean(0) + b.mean(0)) / 2, atol=1e-5)
        np.testing.assert_allclose(r["last"][i], (f[-1] + b[-1]) / 2, atol=1e-5)
        tokens = r["tokens"][r["offsets"][i]: r["offsets"][i + 1]]
        np.testing.assert_allclose(tokens, (f + b.flip(0)) / 2, atol=1e-5)


def test_rc_average_needs_dna_tokenizer(model):
    class Prot:
        name = "protein"

    with pytest.raises(EmbedError, match="DNA tokenizer"):
        Embedder(model, Prot(), EmbedOptions(rc_average=True))


def test_chunk_windows_cover_every_position_once(model, tok):
    e = Embedder(model, tok, EmbedOptions(max_length=10, long="chunk", overlap=3))
    for total in (1, 10, 11, 17, 18, 24, 25, 100):
        kept = []
        for s, t, keep in ChunkStrategy(e).windows(total):
            assert t - s <= 10
            assert keep == (0 if s == 0 else 3)
            kept += list(range(s + keep, t))
        assert kept == list(range(total))


def test_long_chunk_matches_windowed_reference_and_truncate(tmp_path, model, tok):
    rng = np.random.default_rng(2)
    seqs = [random_dna(rng, 95), random_dna(rng, 20), random_dna(rng, 41)]
    out = tmp_path / "c.h5"
    opts = EmbedOptions(pools=("mean", "max", "first", "last"), per_token=True, max_length=32, long="chunk",
                        overlap=8, batch_tokens=64)
    embed_to_file(records_of(seqs), out, model, tok, opts, progress=False)
    r = read_embeddings(out)
    for i, s in enumerate(seqs):
        ids = torch.from_numpy(tok.encode(s))
        ref = torch.empty(len(s), 8)
        start = 0
        while True:  # reference stitching written independently: window stride 24, drop 8
            with torch.no_grad():
                h = model(ids[start: start + 32][None])[0]
            keep = 0 if start == 0 else 8
            ref[start + keep: start + h.shape[0]] = h[keep:]
            if start + 32 >= len(s):
                break
            start += 24
        np.testing.assert_allclose(r["tokens"][r["offsets"][i]: r["offsets"][i + 1]], ref, atol=1e-5)
        np.testing.assert_allclose(r["mean"][i], ref.mean(0), atol=1e-5)
        np.testing.assert_allclose(r["max"][i], ref.max(0).values, atol=1e-5)
        np.testing.assert_allclose(r["first"][i], ref[0], atol=1e-5)
        np.testing.assert_allclose(r["last"][i], ref[-1], atol=1e-5)
    # truncate: the first max_length residues only; lengths keep the original length
    out2 = tmp_path / "t.h5"
    embed_to_file(records_of(seqs), out2, model, tok, EmbedOptions(max_length=32, long="truncate"),
                  progress=False)
    t = read_embeddings(out2)
    assert t["lengths"].tolist() == [95, 20, 41] and t["embedded_lengths"].tolist() == [32, 20, 32]
    np.testing.assert_allclose(t["mean"][0], alone(model, tok, seqs[0][:32]).mean(0), atol=1e-5)


def test_rc_average_with_chunking_mirrors_the_reverse_strand(tmp_path, model, tok):
    s = random_dna(np.random.default_rng(12), 57)
    rc = "".join({"A": "T", "C": "G", "G": "C", "T": "A"}[c] for c in reversed(s))
    kw = dict(pools=("mean", "last"), per_token=True, max_length=16, long="chunk", overlap=4)
    both, fwd, rev = tmp_path / "b.h5", tmp_path / "f.h5", tmp_path / "r.h5"
    embed_to_file(records_of([s]), both, model, tok, EmbedOptions(rc_average=True, **kw), progress=False)
    embed_to_file(records_of([s]), fwd, model, tok, EmbedOptions(**kw), progress=False)
    embed_to_file(records_of([rc]), rev, model, tok, EmbedOptions(**kw), progress=False)
    b, f, r = read_embeddings(both), read_embeddings(fwd), read_embeddings(rev)
    np.testing.assert_allclose(b["tokens"], (f["tokens"] + r["tokens"][::-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(b["mean"], (f["mean"] + r["mean"]) / 2, atol=1e-6)
    np.testing.assert_allclose(b["last"], (f["last"] + r["last"]) / 2, atol=1e-6)


def test_long_error_is_raised_before_writing(tmp_path, model, tok):
    out = tmp_path / "e.h5"
    with pytest.raises(EmbedError, match=r"record 's1'.*exceed --max-length 16"):
        embed_to_file(records_of(["ACGT", "A" * 40]), out, model, tok, EmbedOptions(max_length=16),
                      progress=False)
    assert not out.exists() and not parts_dir_for(out).exists()


def test_backbone_l_max_is_the_default_max_length(tok):
    m = TinyCausal(l_max=12).eval()
    e = Embedder(m, tok, EmbedOptions(long="chunk"))
    assert e.options.max_length == 12 and e.options.chunk_overlap == 3


def test_stream_without_a_length_limit_streams_in_blocks(tok):
    """A stateful backbone with no l_max (Mamba, xLSTM) and ``--long stream``: records longer than one
    block are streamed (not one forward pass over a whole chromosome)."""
    from bioseq.embed import StreamStrategy

    e = Embedder(TinyStepper().eval(), tok, EmbedOptions(long="stream"))
    assert e.options.max_length == StreamStrategy.block == 4096
    assert Embedder(TinyStepper().eval(), tok, EmbedOptions(long="chunk")).options.max_length is None


def test_stream_exact_for_stateful_and_refused_for_stateless(tmp_path, model, tok):
    with pytest.raises(EmbedError, match="recurrent state"):
        Embedder(model, tok, EmbedOptions(long="stream", max_length=16))
    torch.manual_seed(0)
    m = TinyStepper().eval()
    seqs = ["ACGTACGTAAACCCGGGTTTACGATCGATCGA", "ACG"]
    out = tmp_path / "s.h5"
    embed_to_file(records_of(seqs), out, m, tok, EmbedOptions(pools=("mean", "last"), per_token=True,
                                                                max_length=8, long="stream"), progress=False)
    r = read_embeddings(out)
    for i, s in enumerate(seqs):
        h = alone(m, tok, s)  # the whole sequence at once: stream must be exact
        np.testing.assert_allclose(r["mean"][i], h.mean(0), atol=1e-5)
        np.testing.assert_allclose(r["last"][i], h[-1], atol=1e-5)
        np.testing.assert_allclose(r["tokens"][r["offsets"][i]: r["offsets"][i + 1]], h, atol=1e-5)


def test_pool_accumulator_pieces_equal_whole():
    h = torch.randn(23, 4)
    acc = PoolAccumulator(POOLS := ("mean", "max", "first", "last"), 4)
    for s in range(0, 23, 5):
        acc.update(h[s: s + 5], s, 1, 22, 23)
    res = acc.result()
    np.testing.assert_allclose(res["mean"], h[1:22].mean(0), atol=1e-6)
    np.testing.assert_allclose(res["max"], h[1:22].max(0).values)
    np.testing.assert_allclose(res["first"], h[0])
    np.testing.assert_allclose(res["last"], h[-1])
    assert set(res) == set(POOLS)


def test_duplicates_rejected_or_deduped(tmp_path, model, tok):
    recs = [SequenceRecord("a", "ACGT", "x.fa", 1), SequenceRecord("b", "GG", "x.fa", 3),
            SequenceRecord("a", "TTTT", "y.fa", 1)]
    out = tmp_path / "e.h5"
    with pytest.raises(EmbedError, match=r"y.fa:1, record 'a': duplicate id"):
        embed_to_file(lambda: iter(recs), out, model, tok, EmbedOptions(), progress=False)
    assert not out.exists()
    meta = embed_to_file(lambda: iter(recs), out, model, tok, EmbedOptions(), dedupe=True, progress=False)
    r = read_embeddings(out)
    assert r["ids"] == ["a", "b"] and meta["dropped_duplicates"] == 1
    np.testing.assert_allclose(r["mean"][0], alone(model, tok, "ACGT").mean(0), atol=1e-5)


def test_invalid_character_names_record_and_writes_nothing(tmp_path, model, tok):
    recs = [SequenceRecord("ok", "ACGT", "x.fa", 1), SequenceRecord("bad", "ACJT", "x.fa", 3)]
    out = tmp_path / "e.h5"
    with pytest.raises(BioseqError, match=r"record 'bad' position 3"):
        embed_to_file(lambda: iter(recs), out, model, tok, EmbedOptions(), progress=False)
    assert not out.exists() and not parts_dir_for(out).exists()


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_ids_of_any_width_survive_assembly(tmp_path, model, tok, fmt):
    ids = ["a", "YP_001165307.1", "x" * 300, "é-unicode"]
    recs = [SequenceRecord(i, "ACGT") for i in ids]
    out = tmp_path / f"e.{fmt}"
    embed_to_file(lambda: iter(recs), out, model, tok, EmbedOptions(buffer_records=1), fmt=fmt,
                  progress=False)
    assert read_embeddings(out)["ids"] == ids


def test_existing_output_needs_overwrite(tmp_path, model, tok):
    out = tmp_path / "e.h5"
    out.write_text("old")
    with pytest.raises(EmbedError, match="--overwrite"):
        embed_to_file(records_of(["ACGT"]), out, model, tok, EmbedOptions(), progress=False)
    embed_to_file(records_of(["ACGT"]), out, model, tok, EmbedOptions(), overwrite=True, progress=False)
    assert read_embeddings(out)["ids"] == ["s0"]


def test_npy_format_reads_back_like_h5(tmp_path, model, tok):
    seqs = ["ACGTTGCA", "GGGAAACCCTTT", "A"]
    opts = EmbedOptions(pools=("mean", "max"), per_token=True, layers=(1,))
    embed_to_file(records_of(seqs), tmp_path / "e.h5", model, tok, opts, progress=False)
    embed_to_file(records_of(seqs), tmp_path / "e_npy", model, tok, opts, fmt="npy", progress=False)
    a, b = read_embeddings(tmp_path / "e.h5"), read_embeddings(tmp_path / "e_npy")
    assert a["ids"] == b["ids"]
    for k in ("lengths", "embedded_lengths", "offsets", "mean", "max", "tokens"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["layers"][1]["mean"], b["layers"][1]["mean"])
    assert b["metadata"]["pooling"] == ["mean", "max"]


def test_resume_skips_committed_parts_and_checks_inputs(tmp_path, model, tok):
    rng = np.random.default_rng(3)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(5, 80, 40)]
    opts = EmbedOptions(per_token=True, buffer_records=7)
    ref = tmp_path / "ref.h5"
    embed_to_file(records_of(seqs), ref, model, tok, opts, progress=False)

    out = tmp_path / "e.h5"
    calls = {"n": 0}

    class Killed(Exception):
        pass

    import bioseq.embed as engine

    real = engine.embed_buffer

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return real(*a, **k)

    engine.embed_buffer = dying
    try:
        with pytest.raises(Killed):
            embed_to_file(records_of(seqs), out, model, tok, opts, progress=False)
    finally:
        engine.embed_buffer = real
    assert not out.exists() and len(list(parts_dir_for(out).glob("*.npz"))) == 2
    # different inputs: refused
    with pytest.raises(EmbedError, match="input_fingerprint"):
        embed_to_file(records_of(seqs[:-1] + ["ACGT"]), out, model, tok, opts, resume=True, progress=False)
    # a different model: refused
    with pytest.raises(EmbedError, match="state_sha256"):
        embed_to_file(records_of(seqs), out, TinyCausal().eval(), tok, opts, resume=True, progress=False)
    calls["n"] = 0

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    engine.embed_buffer = counting
    try:
        embed_to_file(records_of(seqs), out, model, tok, opts, resume=True, progress=False)
    finally:
        engine.embed_buffer = real
    assert calls["n"] == 4  # 6 buffers, 2 already committed
    assert_same_file(ref, out)
    assert not parts_dir_for(out).exists()


def assert_same_file(a, b):
    ra, rb = read_embeddings(a), read_embeddings(b)
    assert ra["ids"] == rb["ids"]
    keys = [k for k in ra if k not in ("ids", "metadata", "layers")]
    assert keys and set(keys) == {k for k in rb if k not in ("ids", "metadata", "layers")}
    for k in keys:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)


def test_assemble_merges_two_rank_shards_with_padding_duplicates(tmp_path, model, tok):
    """DistributedSampler-style split (rank r gets items r, r + 2, ...; the last is padded by
    repeating item 0): each rank commits parts with global indices; assembly drops duplicates."""
    rng = np.random.default_rng(4)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(3, 60, 9)]
    recs = [SequenceRecord(f"s{i}", s) for i, s in enumerate(seqs)]
    opts = EmbedOptions(per_token=True, pools=("mean", "max"))
    ref = tmp_path / "ref.h5"
    embed_to_file(lambda: iter(recs), ref, model, tok, opts, progress=False)
    e = Embedder(model, tok, opts)
    parts = tmp_path / "parts"
    parts.mkdir()
    n, world = len(recs), 2
    padded = list(range(n)) + list(range((-n) % world))  # 9 -> 10 items, item 0 twice
    for rank in range(world):
        mine = padded[rank::world]
        for k in range(0, len(mine), 2):  # batches of 2 items per rank
            idx = mine[k: k + 2]
            embed_buffer(e, [(recs[i], e.plans(recs[i])) for i in idx], parts, f"rank{rank}-{k:04d}",
                         np.array(idx))
    out = tmp_path / "ddp.h5"
    assemble(parts, out, {"model": "tiny"}, n_rows=n)
    ra, rb = read_embeddings(ref), read_embeddings(out)
    assert rb["ids"] == ra["ids"]
    for k in ("mean", "max", "offsets", "tokens", "lengths"):
        np.testing.assert_allclose(rb[k], ra[k], atol=1e-6, err_msg=k)
    # a missing rank is an error, not a silently short file
    for p in parts.glob("rank1-*"):
        p.unlink()
    with pytest.raises(EmbedError, match="parts cover"):
        assemble(parts, tmp_path / "bad.h5", {}, n_rows=n)


def test_smiles_inputs(tmp_path):
    csv_path = tmp_path / "m.csv.gz"
    with gzip.open(csv_path, "wt") as fh:
        fh.write("name,smiles,y\nethanol,CCO,1\nbenzene,c1ccccc1,0\n")
    recs = list(iter_smiles(csv_path, column="smiles", id_column="name"))
    assert [(r.id, r.seq) for r in recs] == [("ethanol", "CCO"), ("benzene", "c1ccccc1")]
    with pytest.raises(BioseqError, match="no column .smi."):
        list(iter_smiles(csv_path, column="smi"))
    smi = tmp_path / "m.smi"
    smi.write_text("# comment\nCCO ethanol\n\nC1CC1\n")
    recs = list(iter_smiles(smi))
    assert [(r.id, r.seq, r.line) for r in recs] == [("ethanol", "CCO", 2), ("2", "C1CC1", 4)]


def test_fasta_reader_streams_multiple_files(tmp_path):
    a, b = tmp_path / "a.fa", tmp_path / "b.fa.gz"
    a.write_text(">x desc\nACGT\nAC\n>y\nGG\n")
    with gzip.open(b, "wt") as fh:
        fh.write(">z\nTTTT\n")
    recs = list(iter_fasta([a, b]))
    assert [(r.id, bytes(r.seq).decode(), r.line) for r in recs] == [("x", "ACGTAC", 1), ("y", "GG", 4),
                                                                      ("z", "TTTT", 1)]


def test_read_embeddings_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("not hdf5")
    with pytest.raises(EmbedError, match="not a readable HDF5"):
        read_embeddings(p)


# ----------------------------------------------------------------------------------------------
# real HyenaDNA + the command line
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hyena_tiny():
    from bioseq import models
    torch.manual_seed(0)
    return models.build_backbone(preset="hyenadna-tiny-1k").eval()


@pytest.fixture
def dna_tok():
    from bioseq import tokenizers
    return tokenizers.get_tokenizer("dna")


def test_batch_invariance_real_hyena_tiny(tmp_path, hyena_tiny, dna_tok):
    """50 random-length sequences: every row of /mean equals the sequence embedded alone (1e-5)."""
    rng = np.random.default_rng(5)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(1, 700, 50)]
    out = tmp_path / "e.h5"
    embed_to_file(records_of(seqs), out, hyena_tiny, dna_tok,
                  EmbedOptions(pools=("mean", "last"), batch_tokens=4096, buffer_tokens=8192), progress=False)
    r = read_embeddings(out)
    assert r["ids"] == [f"s{i}" for i in range(50)]
    worst = 0.0
    for i, s in enumerate(seqs):
        h = alone(hyena_tiny, dna_tok, s)
        worst = max(worst, float((torch.from_numpy(r["mean"][i]) - h.mean(0)).abs().max()))
        np.testing.assert_allclose(r["last"][i], h[-1], atol=1e-5)
    assert worst < 1e-5, worst


def run_cli(*args, cwd=REPO, **kw):
    return subprocess.run([sys.executable, "-m", "bioseq.cli", "embed", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, **kw)


def write_fasta(path, seqs, ids=None):
    ids = ids or [f"r{i}" for i in range(len(seqs))]
    path.write_text("".join(f">{i} some description\n{s}\n" for i, s in zip(ids, seqs)))
    return path


def test_cli_writes_h5_and_npy(tmp_path, hyena_tiny, dna_tok):
    from bioseq.cli import main

    rng = np.random.default_rng(6)
    fa = write_fasta(tmp_path / "in.fa", [random_dna(rng, n) for n in (30, 5, 70)])
    out = tmp_path / "out.h5"
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(out), "--pool", "mean", "max",
                 "--per-token", "--dtype", "float16", "--layers", "1"]) == 0
    r = read_embeddings(out)
    assert r["ids"] == ["r0", "r1", "r2"] and r["mean"].shape == (3, 128) and r["mean"].dtype == np.float16
    assert r["offsets"].tolist() == [0, 30, 35, 105] and r["layers"][1]["tokens"].shape == (105, 128)
    m = r["metadata"]
    assert m["model"] == "hyenadna-tiny-1k" and m["pooling"] == ["mean", "max"] and m["max_length"] == 1026
    assert "--per-token" in m["command_line"] and m["bioseq_version"] and len(m["state_sha256"]) == 64
    # the same preset + seed gives the same weights: the file agrees with the in-process model
    h = alone(hyena_tiny, dna_tok, bytes(fa.read_text().split("\n")[1], "ascii").decode())
    np.testing.assert_allclose(r["mean"][0].astype(np.float32), h.mean(0), atol=1e-3)
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(tmp_path / "npy"),
                 "--format", "npy"]) == 0
    assert (tmp_path / "npy" / "mean.npy").exists() and read_embeddings(tmp_path / "npy")["ids"] == r["ids"]


def test_bf16_autocast_close_to_fp32(tmp_path, hyena_tiny, dna_tok):
    rng = np.random.default_rng(11)
    seqs = [random_dna(rng, n) for n in (40, 300, 7)]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    embed_to_file(records_of(seqs), a, hyena_tiny, dna_tok, EmbedOptions(), progress=False)
    embed_to_file(records_of(seqs), b, hyena_tiny, dna_tok, EmbedOptions(precision="bf16"), progress=False)
    ra, rb = read_embeddings(a), read_embeddings(b)
    assert rb["mean"].dtype == np.float32 and rb["metadata"]["options"]["precision"] == "bf16"
    assert not np.array_equal(ra["mean"], rb["mean"])  # autocast really ran
    np.testing.assert_allclose(rb["mean"], ra["mean"], atol=0.05)


def test_cli_checkpoint_dir_records_weights_hash(tmp_path, hyena_tiny, dna_tok):
    from bioseq.cli import main

    ckpt_dir = hyena_tiny.save_pretrained(tmp_path / "ckpt", tokenizer=dna_tok)
    fa = write_fasta(tmp_path / "in.fa", ["ACGTACGT", "GGGCCCAAAT"])
    assert main(["embed", "-q", "-m", str(ckpt_dir), str(fa), "-o", str(tmp_path / "o.h5")]) == 0
    m = read_embeddings(tmp_path / "o.h5")["metadata"]
    import hashlib

    assert m["weights_sha256"] == hashlib.sha256((ckpt_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("content, message", [
    (">a\nACGT\n>b\nACXT\n", "record 'b'"),
    (">a\nACGT\n>a\nACGT\n", "duplicate"),
])
def test_cli_bad_input_exit_2_one_line_no_output(tmp_path, content, message, capsys):
    from bioseq.cli import main

    fa = tmp_path / "bad.fa"
    fa.write_text(content)
    out = tmp_path / "out.h5"
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not parts_dir_for(out).exists()


def test_cli_unknown_characters_as_unk(tmp_path, capsys):
    from bioseq.cli import main

    fa = write_fasta(tmp_path / "x.fa", ["ACJT", "ACGT", "XXAC"])
    out = tmp_path / "x.h5"
    with pytest.warns(UserWarning, match="UNK"):
        assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(out),
                     "--unknown", "unk"]) == 0
    r = read_embeddings(out)
    assert r["ids"] == ["r0", "r1", "r2"]
    assert r["metadata"]["tokenizer_config"]["options"]["unknown"] == "unk"
    assert r["metadata"]["unk_tokens"] == 3  # counted once, although both passes encode the input
    assert "3 characters outside the dna alphabet embedded as [UNK]" in capsys.readouterr().err


def test_cli_warnings_are_one_line(tmp_path):
    """A real process: the tokenizer's warning is one ``bioseq: warning:`` line (1-based position), no
    source line; then the total."""
    import subprocess
    import sys

    fa = write_fasta(tmp_path / "x.fa", ["ACJT", "ACGT"])
    cmd = [sys.executable, "-m", "bioseq.cli", "embed", "-q", "-m", "hyenadna-tiny-1k", str(fa),
           "-o", str(tmp_path / "x.h5"), "--unknown", "unk"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "bioseq: warning: DnaTokenizer: " + str(fa) + ", record 'r0', position 3: 'J' is not in the dna "
        "vocabulary and was encoded as [UNK]; later ones are only counted (tokenizer.unk_count)",
        "bioseq embed: 1 character outside the dna alphabet embedded as [UNK]",
    ], proc.stderr


def test_cli_protein_preset_override_and_long_chunk(tmp_path, capsys):
    from bioseq.cli import main

    fa = write_fasta(tmp_path / "p.faa", ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 3])
    out = tmp_path / "p.h5"
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(out), "--model-override",
                 "alphabet=protein", "l_max=34", "--long", "chunk", "--overlap", "8"]) == 0
    r = read_embeddings(out)
    assert r["metadata"]["alphabet"] == "protein" and r["metadata"]["long"] == "chunk"
    assert r["embedded_lengths"].tolist() == [22, 81]
    # --long stream is refused for Hyena with a clear message
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(fa), "-o", str(tmp_path / "s.h5"),
                 "--model-override", "alphabet=protein", "l_max=34", "--long", "stream"]) == 2
    assert "recurrent state" in capsys.readouterr().err


def test_cli_smiles_csv(tmp_path):
    from bioseq.cli import main

    csv_path = tmp_path / "m.csv"
    csv_path.write_text("name,smiles\nethanol,CCO\nbenzene,c1ccccc1\nacid,CC(=O)O\n")
    out = tmp_path / "m.h5"
    assert main(["embed", "-q", "-m", "hyenadna-tiny-1k", str(csv_path), "--smiles-column", "smiles",
                 "--id-column", "name", "-o", str(out), "--model-override", "alphabet=smiles"]) == 0
    assert read_embeddings(out)["ids"] == ["ethanol", "benzene", "acid"]


def test_killed_run_leaves_no_output_and_resumes_identically(tmp_path):
    """SIGKILL mid-run: no out.h5; --resume finishes it and the datasets equal an uninterrupted run."""
    from bioseq.cli import main

    rng = np.random.default_rng(7)
    fa = write_fasta(tmp_path / "in.fa", [random_dna(rng, int(n)) for n in rng.integers(50, 300, 100)])
    common = ["-m", "hyenadna-tiny-1k", str(fa), "--per-token", "--pool", "mean", "last",
              "--buffer-tokens", "1000", "--threads", "1", "-q"]
    out = tmp_path / "out.h5"
    parts = parts_dir_for(out)
    proc = subprocess.Popen([sys.executable, "-m", "bioseq.cli", "embed", *common, "-o", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # a loaded machine can take long to import torch
    while time.time() < deadline and len(list(parts.glob("*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(parts.glob("*.npz")))
    assert not out.exists(), "the run finished before it could be killed"
    assert 2 <= n_done < 30
    ref = tmp_path / "ref.h5"
    assert main(["embed", *common, "-o", str(ref)]) == 0  # uninterrupted, same settings
    assert main(["embed", *common, "-o", str(out), "--resume"]) == 0
    assert not parts.exists()
    assert_same_file(ref, out)


# ----------------------------------------------------------------------------------------------
# distributed (Lightning predict) wiring
# ----------------------------------------------------------------------------------------------


def test_distributed_writer_two_rank_simulation_matches_single_process(tmp_path, model, tok):
    """Buffers split over 2 simulated ranks by DistributedSampler (which pads by repeating a buffer);
    each rank's predict_step + PartWriter commit parts; the merge equals the single-process file."""
    pytest.importorskip("lightning")
    from torch.utils.data import DistributedSampler

    from bioseq.commands.embed_distributed import BufferDataset, EmbedPredictModule, PartWriter

    rng = np.random.default_rng(8)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(3, 90, 23)]
    opts = EmbedOptions(per_token=True, pools=("mean", "max"), buffer_records=5)  # 5 buffers: 1 padded
    ref = tmp_path / "ref.h5"
    embed_to_file(records_of(seqs), ref, model, tok, opts, progress=False)

    parts = tmp_path / "parts"
    parts.mkdir()
    e = Embedder(model, tok, EmbedOptions(**opts.__dict__))
    ds = BufferDataset(records_of(seqs)(), e, e.options)
    assert len(ds) == 5
    module = EmbedPredictModule(model, tok, e.options, parts)
    seen = []
    for rank in range(2):
        writer = PartWriter(parts, per_token=True)
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        for i in sampler:
            item = ds[i]
            seen += item["index"].tolist()
            pred = module.predict_step(item)
            writer.write_on_batch_end(None, module, pred, None, item, 0)
    assert len(seen) > 23 and sorted(set(seen)) == list(range(23))  # buffer 0 ran twice (padding)
    from bioseq.embed import assemble

    out = tmp_path / "ddp.h5"
    assemble(parts, out, {"model": "tiny"}, n_rows=23)
    assert_same_file(ref, out)


def test_distributed_path_runs_lightning_predict_on_cpu(tmp_path, model, tok):
    pytest.importorskip("lightning")
    from bioseq.commands.embed_distributed import embed_distributed

    rng = np.random.default_rng(9)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(3, 90, 11)]
    opts = EmbedOptions(pools=("mean",), buffer_records=3)
    ref, out = tmp_path / "ref.h5", tmp_path / "pl.h5"
    embed_to_file(records_of(seqs), ref, model, tok, opts, progress=False)
    meta = embed_distributed(records_of(seqs), out, model, tok, opts, devices=1, accelerator="cpu",
                             progress=False, metadata={"model": "tiny"})
    assert meta["world_size"] == 1 and meta["parts"] == 4
    assert_same_file(ref, out)
    assert not parts_dir_for(out).exists()


# ----------------------------------------------------------------------------------------------
# real data (slow)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ecoli_chromosome_long_chunk_bounded_memory(shared, tmp_path):
    """The whole 4.6 Mb chromosome, one record, --long chunk, tiny HyenaDNA on CPU: peak RSS < 2 GB."""
    import resource

    genome = shared("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz")
    out = tmp_path / "ecoli.h5"
    t0 = time.time()
    res = run_cli("-m", "hyenadna-tiny-1k", genome, "-o", out, "--long", "chunk", "--pool", "mean", "max",
                  "-q")
    wall = time.time() - t0
    assert res.returncode == 0, res.stderr
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB; max over children
    r = read_embeddings(out)
    assert r["ids"] == ["NC_000913.3"] and r["lengths"].tolist() == [4_641_652]
    assert r["embedded_lengths"].tolist() == [4_641_652]
    assert np.isfinite(r["mean"]).all() and r["mean"].shape == (1, 128)
    print(f"\nE. coli chromosome: {wall:.0f} s wall, peak RSS {rss_mb:.0f} MB")
    assert rss_mb < 2048


@pytest.mark.slow
def test_ecoli_proteome_with_tiny_protein_model(shared, tmp_path):
    """All 4,298 proteins embed in input order with a random tiny protein Hyena; rows match alone runs."""
    from bioseq import models
    from bioseq.tokenizers import get_tokenizer

    faa = shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz")
    tok = get_tokenizer("protein")
    torch.manual_seed(0)
    m = models.build_backbone(preset="hyenadna-tiny-1k", alphabet="protein", vocab_size=tok.vocab_size,
                              l_max=4098).eval()
    out = tmp_path / "p.h5"
    embed_to_file(lambda: iter_fasta([faa]), out, m, tok, EmbedOptions(), progress=False)
    r = read_embeddings(out)
    recs = list(iter_fasta([faa]))
    assert len(r["ids"]) == 4298 and r["ids"] == [x.id for x in recs]
    assert r["lengths"].tolist() == [len(x.seq) for x in recs]
    for i in np.random.default_rng(0).choice(4298, 20, replace=False):
        np.testing.assert_allclose(r["mean"][i], alone(m, tok, recs[i].seq).mean(0), atol=1e-5)


@pytest.mark.slow
def test_cli_ddp_two_cpu_processes_match_single_process(tmp_path):
    """Real DDP (2 CPU processes, gloo) through Lightning predict: same file as a single process."""
    pytest.importorskip("lightning")
    rng = np.random.default_rng(10)
    fa = write_fasta(tmp_path / "in.fa", [random_dna(rng, int(n)) for n in rng.integers(20, 300, 41)])
    common = ["-m", "hyenadna-tiny-1k", fa, "--pool", "mean", "max", "--per-token", "--buffer-tokens", "1500",
              "--threads", "1", "-q"]
    ref, out = tmp_path / "ref.h5", tmp_path / "ddp.h5"
    assert run_cli(*common, "-o", ref).returncode == 0
    res = run_cli(*common, "-o", out, "--devices", "2", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_file(ref, out)
    assert read_embeddings(out)["metadata"]["world_size"] == 2


def test_cli_help_lists_the_options(capsys):
    from bioseq.commands.embed import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--pool", "--per-token", "--layers", "--long", "--overlap", "--batch-tokens", "--resume",
                 "--rc-average", "--format", "--dtype", "--devices", "--smiles-column", "--dedupe"):
        assert flag in out


def test_cli_help_states_real_defaults_only():
    """``bioseq embed --help`` shows defaults that exist (``(default: None)`` says nothing)."""
    from bioseq.commands.embed import build_parser

    text = build_parser().format_help()
    assert "(default: None)" not in text
    assert "(default: ['mean'])" in text and "(default: error)" in text
