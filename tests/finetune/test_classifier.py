"""Heads, SequenceClassifier (metrics over the whole epoch, checkpoints, freezing, lr groups)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch.utils.data import DataLoader

from bioseq.datamodules.benchmark_files import LabeledSequences
from bioseq.datamodules.benchmarks import TokenizedSequenceDataset, make_collate
from bioseq.finetune.classifier import SequenceClassifier
from bioseq.finetune.heads import PredictionHead, SequenceModel, pool

TINY = dict(d_model=16, n_layer=1, d_inner=32, l_max=66, filter_order=16, embed_dropout=0.0)


def tiny(**kw) -> SequenceClassifier:
    return SequenceClassifier(backbone=None, preset="hyenadna-tiny-1k", backbone_overrides=TINY, **kw)


def test_pooling_respects_the_mask():
    h = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(pool(h, mask, "mean")[0], h[0, :3].mean(0))
    assert torch.allclose(pool(h, mask, "mean")[2], h[2, 0])
    assert torch.equal(pool(h, mask, "max")[0], h[0, :3].amax(0))
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 2], h[1, 4], h[2, 0]]))
    assert torch.equal(pool(h, mask, "first"), h[:, 0])
    h2 = h.clone()
    h2[0, 3:] = 1e6  # padding content never leaks into any pooling
    for mode in ("mean", "max", "last", "first"):
        assert torch.equal(pool(h2, mask, mode), pool(h, mask, mode))


def test_rc_average_is_strand_invariant():
    from bioseq.models import build_backbone
    from bioseq.tokenizers import get_tokenizer

    tok = get_tokenizer("dna")
    backbone = build_backbone(preset="hyenadna-tiny-1k", **TINY).eval()
    model = SequenceModel(backbone, PredictionHead(16, 2, "mean", "mlp"), rc_average=True, tokenizer=tok)
    batch = tok.batch_encode(["ACGTTGCAAC", "GGGATTACA", "TTAC"])
    rc = tok.batch_encode(["GTTGCAACGT", "TGTAATCCC", "GTAA"])
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"])
        b = model(rc["input_ids"], rc["attention_mask"])
    assert torch.allclose(a, b, atol=1e-5)
    model.rc_average = False
    with torch.no_grad():
        assert not torch.allclose(model(batch["input_ids"], batch["attention_mask"]), a, atol=1e-4)


def test_rc_average_eval_conjoins_only_outside_training():
    """``rc_average="eval"`` (post-hoc conjoining): one strand in train mode, both strands averaged in
    eval mode; anything else than False / True / "eval" is refused."""
    from bioseq.models import build_backbone
    from bioseq.tokenizers import get_tokenizer

    tok = get_tokenizer("dna")
    backbone = build_backbone(preset="hyenadna-tiny-1k", **TINY)
    head = PredictionHead(16, 2, "mean", "mlp")
    both = SequenceModel(backbone, head, rc_average=True, tokenizer=tok).eval()
    single = SequenceModel(backbone, head, rc_average=False)
    model = SequenceModel(backbone, head, rc_average="eval", tokenizer=tok)
    batch = tok.batch_encode(["ACGTTGCAAC", "GGGATTACA", "TTAC"])
    args = (batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        assert torch.equal(model.train()(*args), single.train()(*args))
        assert torch.equal(model.eval()(*args), both(*args))
        assert not torch.allclose(model.eval()(*args), single.eval()(*args), atol=1e-4)
    with pytest.raises(ValueError, match="rc_average"):
        SequenceModel(backbone, head, rc_average="train", tokenizer=tok)
    clf = tiny(rc_average="eval")
    assert clf.model.rc_average == "eval" and clf.model.tokenizer is not None


def _loader(n: int, length: int, batch_size: int, seed: int = 0, motif: str | None = None, shuffle=False):
    from bioseq.tokenizers import get_tokenizer

    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        s = "".join(rng.choice(list("ACGT"), length))
        y = i % 2
        if motif and y:
            p = int(rng.integers(0, length - len(motif)))
            s = s[:p] + motif + s[p + len(motif) :]
        seqs.append(s[: length - int(rng.integers(0, 8))])  # ragged lengths -> right padding
        labels.append(y)
    data = LabeledSequences(seqs, np.asarray(labels), ["neg", "pos"])
    ds = TokenizedSequenceDataset(data, get_tokenizer("dna"))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=make_collate())


def _trainer(**kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        **kw,
    )


@pytest.mark.parametrize("num_classes", [2, 3])
def test_epoch_metrics_equal_sklearn_on_the_same_predictions(num_classes):
    model = tiny(num_classes=num_classes, pooling="last")  # last token: varies with the final base
    loader = _loader(70, 40, batch_size=16)  # uneven last batch: a per-batch mean would differ
    if num_classes == 3:
        loader.dataset.labels[:] = np.arange(len(loader.dataset)) % 3
    # give the random head a spread of predictions
    torch.nn.init.normal_(model.model.head.net.weight, std=10.0)
    trainer = _trainer()
    res = trainer.test(model, loader, verbose=False)[0]
    preds = trainer.predict(model, loader)
    probs = torch.cat([p["probs"] for p in preds]).numpy()
    y = loader.dataset.labels
    yhat = probs.argmax(1)
    assert len(set(yhat.tolist())) > 1
    assert res["test/accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), abs=1e-6)
    assert res["test/mcc"] == pytest.approx(skm.matthews_corrcoef(y, yhat), abs=1e-5)
    average = "binary" if num_classes == 2 else "macro"
    assert res["test/f1"] == pytest.approx(skm.f1_score(y, yhat, average=average), abs=1e-5)
    assert res["test/f1_macro"] == pytest.approx(skm.f1_score(y, yhat, average="macro"), abs=1e-5)
    auroc = (
        skm.roc_auc_score(y, probs[:, 1])
        if num_classes == 2
        else skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert res["test/auroc"] == pytest.approx(auroc, abs=1e-4)


def test_best_checkpoint_rebuilds_from_hparams(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    train = _loader(64, 40, 16, seed=1, shuffle=True)
    val = _loader(32, 40, 32, seed=2)
    model = tiny(lr=1e-2, weight_decay=0.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/accuracy", mode="max", save_top_k=1)
    trainer = _trainer(max_epochs=2, limit_train_batches=2, callbacks=[ckpt], enable_checkpointing=True)
    trainer.fit(model, train, val)
    loaded = SequenceClassifier.load_from_checkpoint(ckpt.best_model_path)  # no backbone dir needed
    assert loaded.hparams["backbone_config"]["d_model"] == 16 and loaded.hparams["backbone"] is None
    best = trainer.validate(model, val, ckpt_path="best", verbose=False)[0]
    again = _trainer().validate(loaded, val, verbose=False)[0]
    assert again["val/accuracy"] == pytest.approx(best["val/accuracy"])
    assert again["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)


@pytest.mark.slow
def test_learns_a_motif():
    L.seed_everything(0)
    train = _loader(512, 48, 32, seed=1, motif="GATTACAGATTACA", shuffle=True)
    val = _loader(128, 48, 128, seed=2, motif="GATTACAGATTACA")
    model = tiny(lr=5e-3, weight_decay=0.0, pooling="max", warmup_steps=5)
    trainer = _trainer(max_epochs=15)
    trainer.fit(model, train, val)
    assert trainer.validate(model, val, verbose=False)[0]["val/accuracy"] >= 0.85


def test_pretrained_directory_freeze_and_layerwise_lr(tmp_path):
    from bioseq.models import build_backbone

    backbone = build_backbone(preset="hyenadna-tiny-1k", **{**TINY, "n_layer": 2})
    backbone.save_pretrained(tmp_path / "bb")
    model = SequenceClassifier(backbone=str(tmp_path / "bb"), freeze_backbone=True)
    for (name, p), q in zip(model.model.backbone.state_dict().items(), backbone.state_dict().values()):
        assert torch.equal(p, q), name
    opt = model.configure_optimizers()["optimizer"]
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trainable == {id(p) for p in model.model.head.parameters()}

    model = SequenceClassifier(backbone=str(tmp_path / "bb"), layer_lr_decay=0.5, lr=1e-3, head_lr=4e-3)
    opt = model.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    bb = model.model.backbone
    assert lr_of[id(model.model.head.net.weight)] == pytest.approx(4e-3)
    assert lr_of[id(bb.ln_f.weight)] == pytest.approx(1e-3)
    assert lr_of[id(bb.layers[1].mlp.fc1.weight)] == pytest.approx(5e-4)
    assert lr_of[id(bb.layers[0].mlp.fc1.weight)] == pytest.approx(2.5e-4)
    assert lr_of[id(bb.embed_tokens.weight)] == pytest.approx(1.25e-4)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(bb.layers[0].mlp.fc1.weight)] == 0.1 and decay[id(bb.ln_f.weight)] == 0.0


def test_regression_task_runs():
    model = tiny(num_classes=1, problem_type="regression")
    loader = _loader(20, 30, 10)
    loader.dataset.labels = loader.dataset.labels.astype(np.float32) * 2.0 - 1.0
    res = _trainer(max_epochs=1).test(model, loader, verbose=False)[0]
    assert {"test/mse", "test/pearson", "test/r2"} <= set(res)


def test_prediction_writer_writes_dataset_order(tmp_path):
    from bioseq.finetune.classifier import PredictionWriter

    loader = _loader(20, 30, 6, shuffle=False)
    out = tmp_path / "preds.tsv"
    model = tiny()
    trainer = _trainer(callbacks=[PredictionWriter(str(out))])
    trainer.predict(model, loader, return_predictions=False)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["index", "id", "pred"] and len(lines) == 21
    assert [int(x.split("\t")[0]) for x in lines[1:]] == list(range(20))
    probs = np.array([[float(v) for v in x.split("\t")[3:]] for x in lines[1:]])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
