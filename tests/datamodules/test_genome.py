"""GenomeDataModule: windows, splits, N policy, RC, sharding over ranks x workers, resume, length warmup."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bioseq.datamodules.collate import IGNORE_INDEX, LMCollator, shard_positions
from bioseq.datamodules.genome import GenomeDataModule, GenomeWindows
from bioseq.datamodules.length_warmup import LengthSchedule, SequenceLengthWarmup, doubling_stages
from bioseq.errors import BioseqError
from bioseq.tokenizers import DnaTokenizer

TOK = DnaTokenizer()


def write_fasta(path, records, width=60):
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name} test\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
    return path


def random_dna(n, rng, alphabet="ACGTacgt"):
    return "".join(np.array(list(alphabet))[rng.integers(0, len(alphabet), n)])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOSEQ_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng(1)
    chr2 = list(random_dna(7000, rng))
    chr2[1000:2600] = "N" * 1600  # an assembly gap
    chr2[5000:5010] = "nnnnnnnnnn"  # a few soft-masked Ns: kept as token 11
    recs = {"chr1": random_dna(10_000, rng), "chr2": "".join(chr2), "chrM": random_dna(300, rng)}
    return write_fasta(tmp_path / "g.fa", recs), recs


def windows_of(loader):
    out = []
    for batch in loader:
        for ids, mask, idx in zip(batch["input_ids"], batch["attention_mask"], batch["index"]):
            out.append((int(idx), ids[mask].tolist()))
    return out


def test_train_batch_format_and_content(genome):
    path, recs = genome
    dm = GenomeDataModule(str(path), max_length=128, batch_size=4, val_fraction=0.1, rc_prob=0.5, seed=3)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.dataset("train")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 128) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].all()
    assert torch.equal(batch["labels"], batch["input_ids"])  # unshifted copy; no padding here
    assert batch["index"].tolist() == [0, 1, 2, 3]
    n_rc = 0
    for pos in range(ds.num_items()):
        chrom, start, length, rc = ds.locate_item(pos)
        item = ds.make_item(pos)
        seq = recs[ds.names[chrom]][start : start + length].upper()
        expect = TOK.encode(TOK.reverse_complement_str(seq) if rc else seq)
        assert np.array_equal(item["input_ids"], expect)  # lowercase folded, RC applied on ids
        assert start + length <= int(dm.regions["train"].end[dm.regions["train"].chrom == chrom].max())
        n_rc += rc
    assert 0.3 < n_rc / ds.num_items() < 0.7


def test_training_windows_random_per_epoch_disjoint_within_pass(genome):
    path, _ = genome
    dm = GenomeDataModule(str(path), max_length=100, batch_size=8, max_n_fraction=1.0)
    ds = dm.dataset("train")
    starts = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        win = [ds.locate_item(p)[:2] for p in range(ds.num_items())]
        assert len(set(win)) == len(win)
        by_chrom = {}
        for c, s in win:
            by_chrom.setdefault(c, []).append(s)
        for s in by_chrom.values():  # tiles of one pass never overlap
            assert np.all(np.diff(np.sort(s)) >= 100)
        starts[epoch] = win
    assert starts[0] != starts[1]
    ds.set_epoch(0)
    assert [ds.locate_item(p)[:2] for p in range(ds.num_items())] == starts[0]  # deterministic


def test_val_tiling_scores_every_base_once(genome):
    path, recs = genome
    dm = GenomeDataModule(
        str(path), max_length=256, batch_size=4, val_fraction=0.2, test_fraction=0.1, max_n_fraction=1.0
    )
    dm.setup()
    val = dm.val_dataloader()
    covered = {}
    for batch in val:
        assert batch["index"].tolist() == sorted(batch["index"].tolist())
        ds = val.dataset
        for idx, mask, labels in zip(batch["index"], batch["attention_mask"], batch["labels"]):
            c, s, n, rc = ds.locate_item(int(idx))
            assert not rc and int(mask.sum()) == n
            assert (labels[~mask] == IGNORE_INDEX).all()
            covered.setdefault(c, []).append((s, s + n))
    for c, ivs in covered.items():
        name = dm.names[c]
        total = len(recs[name])
        ivs.sort()
        assert ivs[-1][1] == total - round(total * 0.1)  # the val part ends where test starts
        assert all(a[1] == b[0] for a, b in zip(ivs, ivs[1:]))  # contiguous, no overlap
    assert list(dm.val_dataloader().dataset.positions()) == list(range(len(dm.val_dataloader().dataset)))


def test_n_policy(genome):
    path, recs = genome
    dm = GenomeDataModule(str(path), max_length=200, batch_size=4, train_chroms=["chr2"], max_n_fraction=0.1)
    ds = dm.dataset("train")
    assert dm.n_map.total == 1610
    seen_n = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for p in range(ds.num_items()):
            c, s, n, _ = ds.locate_item(p)
            n_count = sum(ch in "Nn" for ch in recs["chr2"][s : s + n])
            assert n_count <= 0.1 * n
            ids = ds.make_item(p)["input_ids"]
            assert int((ids == 11).sum()) == n_count
            seen_n += n_count > 0
    assert seen_n  # the soft-masked Ns are kept as token 11
    dm_all = GenomeDataModule(
        str(path), max_length=200, batch_size=4, train_chroms=["chr2"], max_n_fraction=1.0
    )
    assert dm_all.dataset("train").num_items() > ds.num_items()


@pytest.mark.parametrize("train", [True, False])
def test_sharding_two_ranks_two_workers(genome, train):
    """2 DDP ranks x 2 DataLoader workers: disjoint positions and windows, full coverage, equal steps."""
    path, _ = genome
    dm = GenomeDataModule(str(path), max_length=100, batch_size=3, val_fraction=0.3, max_n_fraction=1.0)
    dm.setup()
    split = "train" if train else "val"
    per_rank, lengths = [], []
    for rank in range(2):
        ds = GenomeWindows(
            dm.fasta,
            dm.names,
            dm.regions[split],
            100,
            train=train,
            rc_prob=0.5,
            seed=7,
            rank=rank,
            world_size=2,
            batch_size=3,
        )
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=LMCollator())
        got = windows_of(loader)
        lengths.append(len(list(loader)))
        assert len(loader) == lengths[-1]
        per_rank.append(got)
        ref = windows_of(DataLoader(ds, batch_size=3, num_workers=0, collate_fn=LMCollator()))
        assert got == ref  # the stream does not depend on the number of workers
    idx = [i for got in per_rank for i, _ in got]
    assert len(idx) == len(set(idx))
    n = ds.num_items()
    assert sorted(idx) == list(range(n - n % 2 if train else n))
    locs = [ds.locate_item(i)[:2] for i in idx]
    assert len(set(locs)) == len(locs)
    if train:
        assert lengths[0] == lengths[1]


def test_shard_positions_workers_get_whole_batches():
    got = {
        w: shard_positions(23, rank=1, world_size=2, worker_id=w, num_workers=3, batch_size=2)
        for w in range(3)
    }
    rank_items = list(range(1, 23, 2))[:11]
    assert list(got[0]) == [1, 3, 13, 15]
    assert sorted(np.concatenate(list(got.values())).tolist()) == rank_items
    skip = shard_positions(23, rank=1, world_size=2, worker_id=0, num_workers=3, batch_size=2, skip_batches=2)
    assert list(skip) == [9, 11, 21]


def test_resume_mid_epoch_continues_with_the_same_batches(genome):
    path, _ = genome
    dm = GenomeDataModule(str(path), max_length=64, batch_size=4, max_n_fraction=1.0, seed=5)
    loader = dm.train_dataloader()
    loader.set_epoch(2)
    full = [b["index"].tolist() for b in loader]
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    fresh = GenomeDataModule(
        str(path), max_length=64, batch_size=4, max_n_fraction=1.0, seed=5
    ).train_dataloader()
    fresh.load_state_dict(state)
    assert [b["index"].tolist() for b in fresh] == full[3:]
    assert len(fresh) == len(full)
    fresh.set_epoch(3)
    assert len([b for b in fresh]) == len(full)  # the skip applies to one pass only


def test_bed_splits_widen_and_clip(genome, tmp_path):
    path, recs = genome
    bed = tmp_path / "seq.bed"
    bed.write_text(
        "# comment\nchr1\t0\t50\ttrain\nchr1\t9990\t10000\ttrain\nchr1\t3000\t3600\ttrain\n"
        "chr2\t6000\t6100\tvalid\nchr1\t5000\t5100\ttest\n"
    )
    dm = GenomeDataModule(str(path), max_length=200, batch_size=2, bed=str(bed), max_n_fraction=1.0)
    dm.setup()
    train = dm.dataset("train")
    assert train.num_items() == 3
    wins = sorted(train.locate_item(p)[:3] for p in range(3))
    assert wins[0] == (0, 0, 200)  # widened, clipped at the chromosome start
    assert 3000 <= wins[1][1] <= 3400 and wins[1][2] == 200  # random sub-window of a long interval
    assert wins[2] == (0, 9800, 200)  # clipped at the chromosome end
    val = dm.dataset("val")
    assert val.locate_item(0)[:3] == (1, 5950, 200)  # centred
    assert len(dm.test_dataloader()) == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ("chr1\t9000\t10001\ttrain", "outside the chromosome"),
        ("chrX\t0\t100\ttrain", "'chrX' is not in the FASTA"),
        ("chrM\t0\t100\ttrain", "longer than chromosome 'chrM'"),
        ("chr1\tzero\t100\ttrain", "must be integers"),
        ("chr1\t0\t100\tholdout", "unknown split"),
    ],
)
def test_bad_bed_rows_name_file_and_line(genome, tmp_path, row, message):
    path, _ = genome
    bed = tmp_path / "bad.bed"
    bed.write_text("chr1\t0\t1000\ttrain\n" + row + "\n")
    dm = GenomeDataModule(str(path), max_length=400, batch_size=2, bed=str(bed))
    with pytest.raises(BioseqError, match=message) as err:
        dm.setup()
    assert f"{bed}:2" in str(err.value) and "\n" not in str(err.value)


def test_bad_arguments_and_inputs(genome, tmp_path):
    path, _ = genome
    for bad in (0, -5):
        with pytest.raises(BioseqError, match="max_length must be a positive integer"):
            GenomeDataModule(str(path), max_length=bad)
    with pytest.raises(BioseqError, match="longer than chromosome 'chrM'"):
        GenomeDataModule(str(path), max_length=400, val_chroms=["chrM"]).setup()
    with pytest.raises(BioseqError, match="'chr9', which is not in the FASTA"):
        GenomeDataModule(str(path), max_length=100, val_chroms=["chr9"]).setup()
    with pytest.raises(BioseqError, match="empty train split"):
        GenomeDataModule(str(path), max_length=20_000).train_dataloader()
    gap = write_fasta(tmp_path / "gap.fa", {"a": "ACGT" * 300, "b": "N" * 1200})
    with pytest.raises(BioseqError, match="empty val split"):  # the held-out chromosome is all N
        GenomeDataModule(str(gap), max_length=500, val_chroms=["b"]).val_dataloader()
    with pytest.raises(BioseqError, match="one way"):
        GenomeDataModule(str(path), val_fraction=0.1, val_chroms=["chr1"])
    ragged = tmp_path / "ragged.fa"
    ragged.write_text(">a\nACGTACGT\nACG\nACGTACGT\n")
    with pytest.raises(BioseqError, match="ragged") as err:
        GenomeDataModule(str(ragged), max_length=4).prepare_data()
    assert str(ragged) in str(err.value) and "\n" not in str(err.value)


def test_plain_gzip_is_decompressed_once(genome, tmp_path):
    path, recs = genome
    gz = tmp_path / "g.fa.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    dm = GenomeDataModule(str(gz), max_length=64, batch_size=2, val_fraction=0.1)
    dm.prepare_data()
    dm.setup()
    assert dm.fasta.path != gz and dm.fasta.path.exists() and str(tmp_path / "cache") in str(dm.fasta.path)
    c, s, n, _ = dm.dataset("val").locate_item(0)
    assert dm.fasta.fetch(dm.names[c], s, s + n) == recs[dm.names[c]][s : s + n]


def test_add_eos(genome):
    path, _ = genome
    dm = GenomeDataModule(str(path), max_length=64, batch_size=2, add_eos=True, val_fraction=0.2)
    b = next(iter(dm.train_dataloader()))
    assert b["input_ids"].shape[1] == 64 and (b["input_ids"][:, -1] == TOK.eos_id).all()
    assert (b["input_ids"][:, :-1] >= 7).all()


def test_length_schedule():
    sched = LengthSchedule([(2, 64, 8), (1, 128, 4), (None, 256, 2)])
    assert [sched.stage_at(e)[1].seq_len for e in range(5)] == [64, 64, 128, 256, 256]
    assert sched.stage_at(1)[2] == 1
    stages = doubling_stages(1024, 32768, 2, duration=100)
    assert [s.seq_len for s in stages] == [1024 * 2**i for i in range(6)]
    assert {s.tokens_per_batch for s in stages} == {65536}
    with pytest.raises(BioseqError, match="differs between stages"):
        LengthSchedule([(1, 64, 8), (None, 128, 8)])
    with pytest.raises(BioseqError, match="only the last stage"):
        LengthSchedule([(None, 64, 8), (1, 128, 4)])


@pytest.mark.parametrize("unit", ["epochs", "steps"])
def test_length_warmup_in_trainer(genome, unit):
    import lightning.pytorch as pl

    path, _ = genome

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.shapes = []

        def training_step(self, batch, batch_idx):
            self.shapes.append((self.current_epoch, tuple(batch["input_ids"].shape)))
            return (self.w * batch["input_ids"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    stages = (
        [(2, 32, 8), (1, 64, 4), (None, 128, 2)]
        if unit == "epochs"
        else [(3, 32, 8), (2, 64, 4), (None, 128, 2)]
    )
    dm = GenomeDataModule(str(path), max_length=128, batch_size=2, max_n_fraction=1.0, samples_per_epoch=24)
    model = Recorder()
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[SequenceLengthWarmup(stages, unit=unit)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    if unit == "epochs":
        per_epoch = {e: s for e, s in model.shapes}
        assert per_epoch == {0: (8, 32), 1: (8, 32), 2: (4, 64), 3: (2, 128)}
    else:
        assert [s for _, s in model.shapes[:5]] == [(8, 32)] * 3 + [(4, 64)] * 2
        assert model.shapes[5][1] == (2, 128)


def test_real_ecoli_plain_gzip_holdout(shared):
    path = shared("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz")
    dm = GenomeDataModule(str(path), max_length=1024, batch_size=8, val_fraction=0.1, rc_prob=0.5)
    dm.prepare_data()
    dm.setup()
    n = 4_641_652
    assert dm.names == ["NC_000913.3"]
    assert dm.regions["val"].start.tolist() == [n - round(n * 0.1)] and dm.regions["val"].end.tolist() == [n]
    val = dm.val_dataloader()
    assert len(val.dataset) == -(-round(n * 0.1) // 1024)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 1024) and int(batch["input_ids"].min()) >= 7
    ds = dm.dataset("train")
    assert all(ds.locate_item(p)[1] + 1024 <= n - round(n * 0.1) for p in range(0, ds.num_items(), 97))


def test_real_bgzf_and_n_runs(shared):
    yeast = shared("data", "genome", "sacCer3_17x10kb.bgzf.fa.gz")
    dm = GenomeDataModule(
        str(yeast), max_length=2000, batch_size=4, val_chroms=["chrM"], rc_prob=0.5, num_workers=2
    )
    dm.prepare_data()
    dm.setup()
    assert len(dm.names) == 17 and dm.regions["train"].bases == 160_000
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == 16 * 4  # (10000 - 2000) // 2000 tiles per chromosome
    assert len(list(dm.val_dataloader())) == 2
    fly = shared("data", "genome", "dmel_r6.42_1pct.fa.gz")
    dm = GenomeDataModule(str(fly), max_length=1000, batch_size=4, val_fraction=0.1, max_n_fraction=0.05)
    dm.prepare_data()
    dm.setup()
    assert dm.n_map.total == 17_972
    ds = dm.dataset("train")
    counts = dm.n_map.count(
        *[
            np.array(x)
            for x in zip(
                *[(c, s, s + n) for c, s, n, _ in (ds.locate_item(p) for p in range(ds.num_items()))]
            )
        ]
    )
    assert counts.max() <= 50


def test_lightning_resume_mid_epoch_sees_the_same_windows(genome, tmp_path):
    """Stop after 3 steps, checkpoint, resume: the later batches equal an uninterrupted run's."""
    import lightning.pytorch as pl

    path, _ = genome

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["index"].tolist(), int(batch["input_ids"].sum())))
            return (self.w * batch["input_ids"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def run(max_steps, ckpt=None):
        dm = GenomeDataModule(str(path), max_length=64, batch_size=4, samples_per_epoch=40, rc_prob=0.5)
        model = Recorder()
        saver = pl.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=3, save_top_k=-1)
        trainer = pl.Trainer(
            max_steps=max_steps,
            logger=False,
            callbacks=[saver],
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model.seen

    full = run(14)  # 10 batches per epoch: crosses into epoch 1
    assert [e for e, _, _ in full] == [0] * 10 + [1] * 4
    assert run(14, ckpt=str(tmp_path / "step=3.ckpt")) == full[3:]  # mid-epoch
    assert run(14, ckpt=str(tmp_path / "step=12.ckpt")) == full[12:]  # in the next epoch
