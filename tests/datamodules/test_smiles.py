"""SmilesDataModule: CSV/TSV/.smi reading, vocabulary build/save/load, splits, context examples, sharding."""

from __future__ import annotations

import gzip

import pytest
from torch.utils.data import DataLoader

from bioseq.datamodules.collate import LMCollator
from bioseq.datamodules.smiles import SmilesDataModule, read_smiles
from bioseq.errors import BioseqError
from bioseq.tokenizers import SmilesTokenizer

MOLS = [
    "CCO",
    "c1ccccc1",
    "CC(=O)O",
    "C[C@@H](N)C(=O)O",
    "ClCCl",
    "OC[C@H]1OC(O)C(O)C1O",
    "C#N",
    "CN1CCC[C@H]1c1cccnc1",
    "O=C=O",
    "[Na+].[Cl-]",
    "C",
    "CCN(CC)CC",
    "Brc1ccccc1",
    "CC(C)(C)O",
]


def write_csv(path, rows, header="id,smiles,y", sep=","):
    text = header + "\n" + "".join(f"m{i}{sep}{s}{sep}{i}\n" for i, s in enumerate(rows))
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_read_formats(tmp_path):
    csv = write_csv(tmp_path / "a.csv.gz", [s + " " for s in MOLS])  # trailing spaces are stripped
    assert [s for s, _ in read_smiles(csv)] == MOLS
    assert read_smiles(csv)[0][1] == 2
    tsv = write_csv(tmp_path / "a.tsv", MOLS, header="id\tSMILES\ty", sep="\t")
    assert [s for s, _ in read_smiles(tsv)] == MOLS  # column name matched case-insensitively
    smi = tmp_path / "a.smi"
    smi.write_text("smiles name\n" + "".join(f"{s}\tmol{i}\n" for i, s in enumerate(MOLS)) + "\n")
    assert [s for s, _ in read_smiles(smi)] == MOLS


def test_missing_column_is_one_line_error(tmp_path):
    csv = write_csv(tmp_path / "a.csv", MOLS)
    with pytest.raises(BioseqError) as err:
        read_smiles(csv, column="canonical_smiles")
    msg = str(err.value)
    assert (
        f"{csv}:1" in msg and "'canonical_smiles'" in msg and "'id', 'smiles', 'y'" in msg and "\n" not in msg
    )
    with pytest.raises(BioseqError, match="no column"):
        SmilesDataModule(str(csv), column="smi", vocab_path=str(tmp_path / "v.json")).prepare_data()


def test_vocab_built_saved_and_reloaded(tmp_path):
    csv = write_csv(tmp_path / "a.csv", MOLS * 3)
    vocab = tmp_path / "run" / "smiles_vocab.json"
    dm = SmilesDataModule(str(csv), vocab_path=str(vocab), max_length=32, val_fraction=0.2)
    dm.prepare_data()
    assert vocab.is_file()
    tok = SmilesTokenizer.load(vocab)
    assert (
        "." in tok.vocab and "Cl" in tok.vocab and "[C@@H]" in tok.vocab and tok.vocab_size == dm.vocab_size
    )
    # a second run (e.g. finetuning on other data) keeps the saved ids
    other = write_csv(tmp_path / "b.csv", ["CCCCCCCCS"])
    dm2 = SmilesDataModule(str(other), vocab_path=str(vocab), max_length=32, val_fraction=0.0)
    assert dm2.tokenizer.vocab == tok.vocab


def test_splits_and_batches(tmp_path):
    mols = [f"C{'C' * i}O" for i in range(60)] + MOLS * 2  # duplicates must share a split
    csv = write_csv(tmp_path / "a.csv", mols)
    dm = SmilesDataModule(
        str(csv),
        vocab_path=str(tmp_path / "v.json"),
        max_length=20,
        batch_size=4,
        val_fraction=0.2,
        test_fraction=0.1,
    )
    dm.prepare_data()
    dm.setup()
    assert dm.too_long == sum(len(dm.tokenizer.tokenize(m)) > 18 for m in mols) > 0
    sets = {k: set(v) for k, v in dm.splits.items()}
    assert (
        not (sets["train"] & sets["val"])
        and not (sets["train"] & sets["test"])
        and sets["val"]
        and sets["test"]
    )
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"][0, 0] == dm.tokenizer.cls_id
    for row, mask, idx in zip(batch["input_ids"], batch["attention_mask"], batch["index"]):
        assert dm.tokenizer.decode(row[mask]) == dm.splits["val"][int(idx)]
        assert row[mask][-1] == dm.tokenizer.eos_id
    assert (batch["labels"][~batch["attention_mask"]] == -100).all()


def test_context_examples(tmp_path):
    csv = write_csv(tmp_path / "a.csv", [f"C{'C' * i}N" for i in range(40)])
    dm = SmilesDataModule(
        str(csv),
        vocab_path=str(tmp_path / "v.json"),
        max_length=64,
        batch_size=4,
        val_fraction=0.2,
        molecules_per_example=4,
        seed=2,
    )
    dm.setup()
    train = set(dm.splits["train"])
    for split in ("train", "val"):
        ds = dm.dataset(split)
        for pos in range(ds.num_items()):
            item = ds.make_item(pos)
            assert len(item["input_ids"]) <= 64
            text = dm.tokenizer.decode(item["input_ids"])
            mols = text.split(".")
            assert mols[-1] == dm.splits[split][item["index"]]  # target last
            assert len(mols) == item["n_molecules"] and 2 <= len(mols) <= 4
            assert set(mols[:-1]) <= train and mols[-1] not in mols[:-1]
    val = dm.dataset("val")
    assert val.make_item(0)["input_ids"].tolist() == val.make_item(0)["input_ids"].tolist()


def test_sharding_two_ranks_two_workers(tmp_path):
    csv = write_csv(tmp_path / "a.csv", [f"C{'C' * i}O" for i in range(45)])
    dm = SmilesDataModule(
        str(csv), vocab_path=str(tmp_path / "v.json"), max_length=64, batch_size=4, val_fraction=0.0
    )
    dm.setup()
    seen, steps = [], []
    for rank in range(2):
        ds = dm.dataset("train")
        ds.rank, ds.world_size = rank, 2
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=LMCollator())
        got = [int(i) for b in loader for i in b["index"]]
        steps.append(len(list(loader)))
        seen += got
    assert steps[0] == steps[1] == 6
    assert len(seen) == len(set(seen)) == 44


def test_bad_arguments(tmp_path):
    csv = write_csv(tmp_path / "a.csv", MOLS)
    for bad in (0, -1):
        with pytest.raises(BioseqError, match="max_length must be a positive integer"):
            SmilesDataModule(str(csv), max_length=bad)
    with pytest.raises(BioseqError, match="file not found"):
        SmilesDataModule(str(tmp_path / "nope.csv"), vocab_path=str(tmp_path / "v.json")).prepare_data()
    with pytest.raises(BioseqError, match="empty test split"):
        SmilesDataModule(
            str(csv), vocab_path=str(tmp_path / "v.json"), val_fraction=0.0, test_fraction=0.001
        ).test_dataloader()


def test_real_moleculenet_files(shared, tmp_path):
    files = [
        shared("data", "smiles", f)
        for f in ("delaney-processed.csv.gz", "BBBP.csv.gz", "Lipophilicity.csv.gz")
    ]
    esol = read_smiles(files[0])
    assert len(esol) == 1128 and esol[0][0] == "OCC3OC(OCC2OC(OC(C#N)c1ccccc1)C(O)C(O)C2O)C(O)C(O)C3O"
    assert len(read_smiles(files[1])) == 2050 and len(read_smiles(files[2])) == 4200
    dm = SmilesDataModule(
        [str(f) for f in files],
        vocab_path=str(tmp_path / "v.json"),
        max_length=256,
        batch_size=32,
        val_fraction=0.05,
        num_workers=2,
    )
    dm.prepare_data()
    dm.setup()
    assert sum(len(v) for v in dm.splits.values()) + dm.too_long == 1128 + 2050 + 4200
    assert dm.tokenizer.unk_count == 0
    n = sum(len(b["index"]) for b in dm.train_dataloader())
    assert n == len(dm.splits["train"])
