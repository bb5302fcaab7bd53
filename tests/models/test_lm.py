"""LanguageModel over a tiny stand-in backbone of the contract (and over HyenaDNA when it is there)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bioseq.errors import BioseqError
from bioseq.models import Backbone, BackboneConfig
from bioseq.models.lm import IGNORE_INDEX, LanguageModel, mlm_mask, special_token_ids


class ToyDnaTokenizer:
    """Just enough of the tokenizer interface: the DNA vocabulary of API.md."""

    name = "dna"
    vocab = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"]
    vocab_size = 12
    cls_id, sep_id, bos_id, mask_id, pad_id, reserved_id, unk_id = range(7)
    symbol_ids = torch.tensor([7, 8, 9, 10])

    def to_dict(self):
        return {"name": "dna"}

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict()))


@dataclasses.dataclass
class ToyConfig(BackboneConfig):
    arch: str = "toy"
    alphabet: str = "dna"
    vocab_size: int = 16
    d_model: int = 16


class ToyBackbone(Backbone):
    """Causal stand-in: embedding -> GRU -> LayerNorm (the backbone contract, nothing more)."""

    arch = "toy"

    def __init__(self, config: ToyConfig | None = None):
        super().__init__(config or ToyConfig())
        self.d_model = self.config.d_model
        self.embed_tokens = nn.Embedding(self.config.vocab_size, self.d_model)
        self.drop = nn.Dropout(0.1)
        self.rnn = nn.GRU(self.d_model, self.d_model, batch_first=True)
        self.norm = nn.LayerNorm(self.d_model)

    def forward(self, input_ids, attention_mask=None, inputs_embeds=None, output_hidden_states=False):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        h = self.norm(self.rnn(self.drop(x))[0])
        return (h, (x, h)) if output_hidden_states else h


def toy_model(**kw) -> LanguageModel:
    kw.setdefault("tokenizer", ToyDnaTokenizer())
    return LanguageModel(backbone=ToyBackbone(), **kw)


def periodic_batch(batch=4, length=24, pad_last=5, seed=0):
    """ACGT repeated with a random phase; the last row right-padded with [PAD]."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.randint(4, (batch, 1), generator=g)
    ids = 7 + (torch.arange(length) + phase) % 4
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, length - pad_last:] = False
    ids[~mask] = 4
    return {"input_ids": ids, "attention_mask": mask, "index": torch.arange(batch)}


class ListData(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def loader(batches):
    return DataLoader(ListData(batches), batch_size=None)


def trainer(tmp_path, **kw):
    kw.setdefault("max_steps", 1)
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     **kw)


def test_forward_is_tied_and_padded():
    model = toy_model().eval()
    batch = periodic_batch()
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 24, 16)  # padded vocabulary rows, like the official checkpoints
    hidden = model.backbone(batch["input_ids"])
    torch.testing.assert_close(logits, hidden @ model.backbone.embed_tokens.weight.T)
    assert not [n for n, _ in model.named_parameters() if "head" in n]  # no separate head weights


def test_clm_loss_shifts_and_ignores_pad():
    model = toy_model().eval()
    batch = periodic_batch()
    loss_sum, count = model.token_losses(batch)
    logits = model(batch["input_ids"])[..., :12]
    expected, n = 0.0, 0
    for b in range(4):
        real = int(batch["attention_mask"][b].sum())
        for t in range(real - 1):
            expected += F.cross_entropy(logits[b, t], batch["input_ids"][b, t + 1]).item()
            n += 1
    assert int(count) == n == 4 * 23 - 5
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    # explicit labels win over input_ids (datamodule convention: pad -> -100, unshifted)
    labels = batch["input_ids"].masked_fill(~batch["attention_mask"], IGNORE_INDEX)
    labels[:, :12] = IGNORE_INDEX
    _, count2 = model.token_losses({**batch, "labels": labels})
    assert int(count2) == n - 4 * 11


def test_mlm_mask_statistics():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 12, (64, 512), generator=g)
    ids[:, 0] = 0  # [CLS]
    ids[:, -1] = 1  # [SEP]
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 400:] = False
    ids[:, 400:] = 4
    tok = ToyDnaTokenizer()
    masked, labels = mlm_mask(ids, mask, mask_id=3, symbol_ids=tok.symbol_ids,
                              special_ids=special_token_ids(tok), probability=0.15, generator=g)
    chosen = labels != IGNORE_INDEX
    eligible = mask & (ids >= 7)
    assert not (chosen & ~eligible).any()  # never PAD or specials
    assert chosen.float().sum() / eligible.sum() == pytest.approx(0.15, abs=0.01)
    torch.testing.assert_close(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    n = chosen.sum().item()
    to_mask = (masked == 3) & chosen
    changed = chosen & (masked != ids) & (masked != 3)
    assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.03)
    # 10% random symbols, of which 1/4 equal the original (N is not a symbol): 7.5%-10% change
    assert 0.06 < changed.sum().item() / n < 0.11
    assert set(masked[changed].unique().tolist()) <= {7, 8, 9, 10}


def test_mlm_loss_only_on_masked():
    model = toy_model(objective="mlm", mlm_probability=0.3).eval()
    batch = periodic_batch(length=64)
    loss_sum, count = model.token_losses(batch, torch.Generator().manual_seed(0))
    _, labels = mlm_mask(batch["input_ids"], batch["attention_mask"], mask_id=3,
                         symbol_ids=ToyDnaTokenizer.symbol_ids, special_ids=list(range(7)),
                         probability=0.3, generator=torch.Generator().manual_seed(0))
    assert int(count) == int((labels != IGNORE_INDEX).sum()) > 0
    assert math.isfinite(loss_sum.item())


def test_training_reduces_loss_and_logs(tmp_path):
    model = toy_model(lr=3e-2, warmup_steps=2, weight_decay=0.0)
    batches = [periodic_batch(seed=s) for s in range(8)]
    t = trainer(tmp_path, max_steps=40, max_epochs=10, limit_val_batches=2, val_check_interval=None,
                check_val_every_n_epoch=1, num_sanity_val_steps=0)
    before = t.validate(model, loader(batches[:2]), verbose=False)[0]["val/ppl"]
    t.fit(model, loader(batches), loader(batches[:2]))
    after = t.callback_metrics["val/ppl"].item()
    assert after < before / 2 and after < 1.5  # periodic sequence is learnt
    for key in ("train/loss", "train/tokens_per_s", "train/lr", "val/loss"):
        assert key in t.callback_metrics
    assert t.callback_metrics["train/tokens_per_s"] > 0


def test_val_perplexity_is_token_weighted(tmp_path):
    model = toy_model().eval()
    short = periodic_batch(batch=1, length=6, pad_last=0, seed=1)
    long = periodic_batch(batch=3, length=40, pad_last=20, seed=2)
    sums = [model.token_losses(b) for b in (short, long)]
    total = sum(s for s, _ in sums) / sum(c for _, c in sums)
    out = trainer(tmp_path).validate(model, loader([short, long]), verbose=False)[0]
    assert out["val/ppl"] == pytest.approx(math.exp(total.item()), rel=1e-5)
    mean_of_batches = sum(s / c for s, c in sums) / 2
    assert abs(out["val/loss"] - mean_of_batches.item()) > 1e-4  # differs from a mean of batch means
    assert out["val/tokens"] == int(sum(c for _, c in sums))


def test_step_randomness_is_keyed_by_batch(tmp_path):
    model = toy_model(objective="mlm")
    batch = periodic_batch(length=64)
    model.train()
    a = model._run_step(batch, 3, stage=0)[0]
    torch.manual_seed(123)  # the global RNG does not matter
    b = model._run_step(batch, 3, stage=0)[0]
    c = model._run_step(batch, 4, stage=0)[0]
    assert a.item() == b.item() and a.item() != c.item()


def test_checkpoint_hparams_and_export(tmp_path):
    model = toy_model(lr=1e-3)
    t = trainer(tmp_path)
    t.fit(model, loader([periodic_batch()]))
    t.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["backbone_config"] == dataclasses.asdict(ToyConfig()) and hp["arch"] == "toy"
    assert hp["tokenizer"] == {"name": "dna"} and hp["lr"] == 1e-3
    restored = LanguageModel.load_from_checkpoint(tmp_path / "m.ckpt", backbone=ToyBackbone(),
                                                  tokenizer=ToyDnaTokenizer())
    batch = periodic_batch()
    torch.testing.assert_close(restored.eval()(batch["input_ids"]), model.eval()(batch["input_ids"]))
    model.export(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["arch"] == "toy"
    assert (tmp_path / "export" / "tokenizer.json").exists()


def test_bad_arguments():
    with pytest.raises(BioseqError, match="objective"):
        toy_model(objective="span")
    with pytest.raises(BioseqError, match="rows"):
        LanguageModel(backbone=ToyBackbone(ToyConfig(vocab_size=8)), tokenizer=ToyDnaTokenizer())


# ---------------------------------------------------------------------------------- real HyenaDNA
def tiny_hyena(**kw) -> LanguageModel:
    return LanguageModel(arch="hyena", backbone_config=dict(d_model=32, n_layer=1, l_max=66), **kw)


def dna_batches(n=4, batch=2, length=64, seed=0):
    from bioseq.tokenizers import DnaTokenizer

    rng = torch.Generator().manual_seed(seed)
    tok = DnaTokenizer()
    out = []
    for _ in range(n):
        seqs = ["".join("ACGT"[i] for i in torch.randint(4, (length,), generator=rng)) for _ in range(batch)]
        enc = tok.batch_encode(seqs, add_eos=True)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def test_hyena_checkpoint_roundtrip_and_export(tmp_path):
    from bioseq import models
    model = tiny_hyena(lr=1e-3)
    assert model.tokenizer.name == "dna" and model.backbone.vocab_size == 16
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, loader(dna_batches()))
    t.save_checkpoint(tmp_path / "m.ckpt")
    restored = LanguageModel.load_from_checkpoint(tmp_path / "m.ckpt")  # rebuilt from plain hparams
    ids = dna_batches(1)[0]["input_ids"]
    expected = model.eval()(ids)
    torch.testing.assert_close(restored.eval()(ids), expected)
    assert restored.hparams.backbone_config["d_model"] == 32
    model.export(tmp_path / "export")
    backbone = models.load_backbone(str(tmp_path / "export")).eval()
    torch.testing.assert_close(backbone(ids) @ backbone.embed_tokens.weight.T, expected)
    assert models.load_tokenizer_for(str(tmp_path / "export")).name == "dna"
    # a model started from the exported weights
    again = LanguageModel(pretrained=str(tmp_path / "export")).eval()
    torch.testing.assert_close(again(ids), expected)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_hyena_trains_in_precision(tmp_path, precision):
    model = tiny_hyena(lr=1e-2, warmup_steps=1)
    t = trainer(tmp_path, max_steps=3, precision=precision)
    t.fit(model, loader(dna_batches(3)))
    assert math.isfinite(t.callback_metrics["train/loss"].item())


def test_hyena_mlm_objective(tmp_path):
    model = tiny_hyena(objective="mlm")
    out = trainer(tmp_path).validate(model, loader(dna_batches(2)), verbose=False)[0]
    assert 2.0 < out["val/ppl"] < 40  # near-uniform over the 12-token vocabulary at init


@pytest.mark.slow
def test_ddp_validation_perplexity_matches_single_process(tmp_path):
    """Two CPU ranks (ddp_spawn, gloo) score disjoint windows; the reduced ppl equals one process's."""
    import dataclasses as dc

    from bioseq import synthetic
    from bioseq.datamodules.genome import GenomeDataModule

    cfg = dc.replace(synthetic.SyntheticConfig(), chromosomes=(("c1", 20_000), ("c2", 10_000)))
    fasta = synthetic.write_fasta(tmp_path / "g.fa", synthetic.generate_genome(cfg)[0])
    model = tiny_hyena()

    def data():
        return GenomeDataModule(fasta=str(fasta), max_length=64, batch_size=4, val_fraction=0.2,
                                add_eos=True)

    one = trainer(tmp_path).validate(model, datamodule=data(), verbose=False)[0]
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                    enable_progress_bar=False, default_root_dir=tmp_path)
    two = ddp.validate(model, datamodule=data(), verbose=False)[0]
    assert two["val/tokens"] == one["val/tokens"] > 0
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-6)
