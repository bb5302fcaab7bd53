"""ProteinDataModule: streamed records, crops, hash splits, sharding, alignments and homolog contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bioseq.datamodules.collate import LMCollator
from bioseq.datamodules.protein import ProteinDataModule, clean_aligned, read_alignment, split_of
from bioseq.errors import BioseqError
from bioseq.tokenizers import ProteinTokenizer

TOK = ProteinTokenizer()
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def write_proteins(path, n=60, seed=0, lengths=(5, 120)):
    rng = np.random.default_rng(seed)
    recs = {f"P{i:04d}": "".join(AA[rng.integers(0, 20, rng.integers(*lengths))]) for i in range(n)}
    path.write_text("".join(f">{k} some protein\n{v}\n" for k, v in recs.items()))
    return recs


def indices(loader):
    return [int(i) for b in loader for i in b["index"]]


def test_records_crop_and_specials(tmp_path):
    recs = write_proteins(tmp_path / "p.fa")
    dm = ProteinDataModule(fasta=str(tmp_path / "p.fa"), max_length=32, batch_size=4, val_fraction=0.25)
    dm.setup()
    assert sum(dm.counts.values()) == 60 and dm.counts["val"] > 5
    val_ids = [k for k in recs if split_of(k, 0.25, 0.0) == "val"]
    batches = list(dm.val_dataloader())
    got = [row[mask].tolist() for b in batches for row, mask in zip(b["input_ids"], b["attention_mask"])]
    assert len(got) == len(val_ids)
    for ids, rid in zip(got, val_ids):  # evaluation: first window, [CLS] ... [SEP]
        assert ids == TOK.encode(recs[rid][:30], add_cls=True, add_eos=True).tolist()
    train = dm.dataset("train")
    crops = {}
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for item in train:
            ids = item["input_ids"]
            assert ids[0] == TOK.cls_id and ids[-1] == TOK.sep_id and len(ids) <= 32
            crops.setdefault(item["index"], []).append(TOK.decode(ids))
    train_ids = [k for k in recs if split_of(k, 0.25, 0.0) == "train"]
    long = [i for i, k in enumerate(train_ids) if len(recs[k]) > 60]
    for i in long:
        assert all(c in recs[train_ids[i]] for c in crops[i])
    assert any(crops[i][0] != crops[i][1] for i in long)  # random crops change with the epoch


def test_hash_split_is_stable_and_order_independent(tmp_path):
    recs = write_proteins(tmp_path / "a.fa", n=200)
    rev = tmp_path / "b.fa"
    rev.write_text("".join(f">{k}\n{v}\n" for k, v in reversed(list(recs.items()))))
    splits = {}
    for name in ("a.fa", "b.fa"):
        dm = ProteinDataModule(fasta=str(tmp_path / name), max_length=64, val_fraction=0.1, test_fraction=0.1)
        dm.setup()
        ds = dm.dataset("val")
        splits[name] = sorted(TOK.decode(ds.encode(i, p, r)["input_ids"]) for i, p, r in ds.records())
        assert 8 < dm.counts["val"] < 35 and 8 < dm.counts["test"] < 35
    assert splits["a.fa"] == splits["b.fa"]
    other = {split_of(k, 0.1, 0.1, split_seed=1) for k in recs}
    assert [split_of(k, 0.1, 0.1, 1) for k in recs] != [split_of(k, 0.1, 0.1, 0) for k in recs] and len(
        other
    ) == 3


def test_streaming_shards_two_ranks_two_workers(tmp_path):
    write_proteins(tmp_path / "p.fa", n=101)
    dm = ProteinDataModule(
        fasta=str(tmp_path / "p.fa"), max_length=40, batch_size=4, val_fraction=0.1, shuffle_buffer=7
    )
    dm.setup()
    n = dm.counts["train"]
    seen, steps = [], []
    for rank in range(2):
        ds = dm.dataset("train")
        ds.rank, ds.world_size = rank, 2
        ds.set_epoch(3)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=LMCollator())
        got = indices(loader)
        steps.append(len(list(loader)))
        assert steps[-1] == len(loader)
        seen += got
        assert got != sorted(got)  # shuffled
    assert steps[0] == steps[1]
    assert len(seen) == len(set(seen)) == n - n % 2


def test_clean_aligned_formats():
    a2m = "MK.ab-C..d-E"
    assert clean_aligned(a2m, "keep") == "MKABCDE"
    assert clean_aligned(a2m, "drop") == "MKCE"
    assert clean_aligned("MK--LV", "drop") == "MKLV"  # aligned FASTA
    with pytest.raises(BioseqError, match="insertions"):
        clean_aligned("MK", "upper")


def test_homolog_contexts(tmp_path):
    rng = np.random.default_rng(3)
    core = "".join(AA[rng.integers(0, 20, 30)])
    rows = [">query/1-30\n" + core + "\n"]
    for i in range(40):
        s = list(core)
        s[i % 30] = "-"
        ins = "".join(AA[rng.integers(0, 20, 3)]).lower()
        rows.append(f">hom{i}/1-32\n{''.join(s[:10])}{ins}{''.join(s[10:20])}..{''.join(s[20:])}\n")
    aln = tmp_path / "fam.a2m"
    aln.write_text("".join(rows))
    assert [len(s) for _, s, _ in read_alignment(aln, "keep")][:2] == [30, 32]
    assert [len(s) for _, s, _ in read_alignment(aln, "drop")][:2] == [30, 29]
    dm = ProteinDataModule(alignment=str(aln), max_length=120, batch_size=2, val_fraction=0.2, seed=1)
    dm.setup()
    seqs = dm.families[0]
    train_members = set(dm.pools[0].tolist())
    for split in ("train", "val"):
        ds = dm.dataset(split)
        for pos in range(ds.num_items()):
            fam, member, _ = ds.example(pos)
            item = ds.make_item(pos)
            ids = item["input_ids"]
            assert len(ids) <= 120 and ids[0] == TOK.cls_id and ids[-1] == TOK.sep_id
            parts = TOK.decode(ids[1:-1], skip_special_tokens=False).split("[SEP]")
            assert parts[-1] == seqs[member]  # the target is last
            assert len(parts) - 1 == item["n_context"] >= 2
            context = [seqs.index(p) for p in parts[:-1]]
            assert member not in context and set(context) <= train_members
    val = dm.dataset("val")
    assert [val.make_item(0)["input_ids"].tolist()] == [val.make_item(0)["input_ids"].tolist()]
    train = dm.dataset("train")
    train.set_epoch(0)
    a = [train.make_item(p)["input_ids"].tolist() for p in range(4)]
    train.set_epoch(1)
    assert a != [train.make_item(p)["input_ids"].tolist() for p in range(4)]


def test_bad_input(tmp_path):
    write_proteins(tmp_path / "p.fa", n=3)
    with pytest.raises(BioseqError, match="max_length must be a positive integer"):
        ProteinDataModule(fasta=str(tmp_path / "p.fa"), max_length=0)
    with pytest.raises(BioseqError, match="no room for residues"):
        ProteinDataModule(fasta=str(tmp_path / "p.fa"), max_length=2)
    with pytest.raises(BioseqError, match="exactly one"):
        ProteinDataModule()
    with pytest.raises(BioseqError, match="empty test split"):
        ProteinDataModule(
            fasta=str(tmp_path / "p.fa"), test_fraction=0.01, val_fraction=0.0
        ).test_dataloader()
    with pytest.raises(BioseqError, match="file not found"):
        ProteinDataModule(fasta=str(tmp_path / "missing.fa")).prepare_data()
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nMKV\n>bad\nMKJ9V\n")
    dm = ProteinDataModule(fasta=str(bad), max_length=16, val_fraction=0.0)
    with pytest.raises(BioseqError) as err:
        list(dm.train_dataloader())
    assert "bad" in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


def test_real_proteome(shared):
    path = shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz")
    dm = ProteinDataModule(fasta=str(path), max_length=512, batch_size=16, val_fraction=0.05, num_workers=2)
    dm.setup()
    assert sum(dm.counts.values()) == 4298 and 150 < dm.counts["val"] < 280
    loader = dm.val_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    lengths = [int(m.sum()) for b in batches for m in b["attention_mask"]]
    assert len(lengths) == dm.counts["val"] and max(lengths) == 512 and min(lengths) >= 10
    assert all((b["labels"][~b["attention_mask"]] == -100).all() for b in batches)


def test_real_dhfr_alignment(shared):
    path = shared("data", "protein", "DHFR_ecoli_homologs_plmc.a2m.gz")
    rows = read_alignment(path)
    assert len(rows) == 3629 and rows[0][0] == "DYR_ECOLI/1-159" and len(rows[0][1]) == 159
    dm = ProteinDataModule(alignment=str(path), max_length=1024, batch_size=4, val_fraction=0.05)
    dm.setup()
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].shape[0] == 4 and b["input_ids"].shape[1] > 800
    n_sep = (b["input_ids"] == TOK.sep_id).sum(1)
    assert (n_sep >= 5).all()


def test_prot_xlstm_vocabulary_with_a_prot_xlstm_model(shared):
    """``vocabulary="prot-xlstm"``: batches in Prot-xLSTM's ids (<cls> 0, <eos> 2, <pad> 1) that a
    Prot-xLSTM preset takes through the LM step (the vocabularies agree)."""
    from bioseq.models import build_backbone
    from bioseq.models.lm import LanguageModel

    path = shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz")
    dm = ProteinDataModule(fasta=str(path), max_length=64, batch_size=4, val_fraction=0.05,
                           vocabulary="prot-xlstm")
    dm.setup()
    b = next(iter(dm.val_dataloader()))
    ids, mask = b["input_ids"], b["attention_mask"]
    assert (ids[:, 0] == 0).all() and (ids[~mask] == 1).all() and int(ids.max()) < 38
    assert dm.tokenizer.name == "prot-xlstm" and dm.vocab_size == 38
    lm = LanguageModel(backbone=build_backbone("xlstm", "prot-xlstm-tiny"), tokenizer="prot-xlstm")
    loss_sum, count = lm.token_losses(b)
    assert torch.isfinite(loss_sum) and int(count) > 0
    with pytest.raises(BioseqError, match="vocabulary must be 'protein' or 'prot-xlstm'"):
        ProteinDataModule(fasta=str(path), vocabulary="esm")
