"""The backbone contract (models/base.py), checked for every registered architecture.

Each case of ``TINY_CONFIGS`` is a tiny config (a dict naming its ``arch``); every arch in
``bioseq.models.ARCHITECTURES`` needs at least one case, so a new family is tested by adding one line.
The test recurrent backbone (tests/models/toy_recurrent.py) is registered here, so the state paths of
the suite and ``bioseq embed --long stream`` run before any real recurrent family is there.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from bioseq import models
from bioseq.errors import BioseqError
from tests.models import toy_recurrent

if "toy-recurrent" not in models.ARCHITECTURES:
    models.register(toy_recurrent.FAMILY)

_XLSTM = dict(arch="xlstm", d_model=32, n_layer=2, num_heads=2, chunk_size=8, round_proj_up_to_multiple_of=16,
              ffn_round_proj_up_to_multiple_of=16)
TINY_CONFIGS: dict[str, dict] = {
    "hyena": dict(arch="hyena", d_model=32, n_layer=2, l_max=160, filter_order=16, embed_dropout=0.0),
    "mamba1": dict(arch="mamba", d_model=32, n_layer=2, d_state=8),
    "mamba2": dict(arch="mamba", ssm_layer="mamba2", d_model=32, n_layer=2, d_state=8, headdim=16, ngroups=2,
                   chunk_size=8),
    "caduceus-ph": dict(arch="caduceus", d_model=16, n_layer=2, d_state=4, rcps=False),
    "caduceus-ps": dict(arch="caduceus", d_model=16, n_layer=2, d_state=4, rcps=True),
    "toy-recurrent": dict(arch="toy-recurrent", d_model=16, n_layer=2, chunk=16),
    "toy-recurrent-untied": dict(arch="toy-recurrent", d_model=16, n_layer=1, chunk=7,
                                 tie_word_embeddings=False),
    "xlstm": _XLSTM,
    "xlstm-slstm": {**_XLSTM, "slstm_at": [1], "rope": "head"},
    "xlstm-bidir": {**_XLSTM, "slstm_at": [1], "rope": "head", "bidirectional": True},
    "xlstm-rcps": {**_XLSTM, "slstm_at": [1], "bidirectional": True, "rcps": True},
}
CASES = sorted(TINY_CONFIGS)
TOL = 1e-5


def build(case: str, seed: int = 0) -> models.Backbone:
    torch.manual_seed(seed)
    model = models.build_backbone(config=TINY_CONFIGS[case])
    with torch.no_grad():  # perturb every parameter: zero / unit inits cannot hide wiring bugs
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def dna_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, 12, (batch, length), generator=g)


def hidden_of(out):
    return out[0] if isinstance(out, tuple) else out


def is_recurrent(model) -> bool:
    return bool(getattr(model, "supports_state", False))


# --- the registry covers every architecture ----------------------------------------------------


def test_every_architecture_has_a_case():
    covered = {cfg["arch"] for cfg in TINY_CONFIGS.values()}
    missing = sorted(set(models.ARCHITECTURES) - covered)
    assert not missing, f"add a tiny config to TINY_CONFIGS for {missing}"


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_config_round_trip_and_unknown_keys(case, tmp_path):
    model = build(case)
    cfg = model.config
    assert isinstance(cfg, models.BackboneConfig)
    d = cfg.to_dict()
    json.dumps(d)  # plain data
    assert d["arch"] == model.arch == type(model).arch and model.arch in models.ARCHITECTURES
    assert type(cfg).from_dict(d) == cfg
    with pytest.raises(BioseqError, match="no_such_field"):
        type(cfg).from_dict({**d, "no_such_field": 1})
    with pytest.raises(BioseqError, match="no_such_field"):
        models.build_backbone(config={**d, "no_such_field": 1})
    with pytest.raises(BioseqError, match="no_such_field"):
        models.resolve_backbone(config=d, overrides={"no_such_field": 1})
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**d, "no_such_field": 1}))
    with pytest.raises(BioseqError, match="no_such_field"):
        models.load_backbone(tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_declared_attributes(case):
    model = build(case)
    ids = dna_ids(2, 13)
    h = hidden_of(model(ids))
    assert h.shape == (2, 13, model.hidden_size)
    assert isinstance(model.causal, bool) and isinstance(model.supports_state, bool)
    assert model.vocab_size == model.embed_tokens.weight.shape[0] >= 12
    assert model.alphabet == model.config.alphabet
    logits = model.lm_logits(h)
    assert logits.shape == (2, 13, model.vocab_size)
    assert (model.lm_head is None) == model.tie_word_embeddings


# --- forward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_padding_invariance(case):
    """A sequence alone and right-padded in a batch beside a longer one give the same outputs."""
    model = build(case)
    long, short = dna_ids(1, 41, seed=2)[0], dna_ids(1, 29, seed=3)[0]
    ids = torch.full((2, 41), 4)
    ids[0], ids[1, :29] = long, short
    mask = ids != 4
    mask[0] = True
    with torch.no_grad():
        batch = hidden_of(model(ids, attention_mask=mask))
        alone = hidden_of(model(short[None], attention_mask=torch.ones(1, 29, dtype=torch.bool)))
        alone_long = hidden_of(model(long[None]))
    assert (batch[1, :29] - alone[0]).abs().max() <= TOL
    assert (batch[0] - alone_long[0]).abs().max() <= TOL


@pytest.mark.parametrize("case", CASES)
def test_max_length_is_enforced_or_absent(case):
    """A declared ``max_length`` refuses longer inputs with a one-line error; without one any length runs."""
    model = build(case)
    length = (model.max_length or 200) + 1
    if model.max_length is None:
        with torch.no_grad():
            assert hidden_of(model(dna_ids(1, length))).shape[1] == length
    else:
        with pytest.raises(BioseqError, match=str(model.max_length)):
            model(dna_ids(1, length))


@pytest.mark.parametrize("case", CASES)
def test_inputs_embeds_equals_embed_tokens(case):
    model = build(case)
    ids = dna_ids(2, 17)
    with torch.no_grad():
        a = hidden_of(model(ids))
        b = hidden_of(model(inputs_embeds=model.embed_tokens(ids)))
    assert torch.equal(a, b) or (a - b).abs().max() <= TOL


@pytest.mark.parametrize("case", CASES)
def test_output_hidden_states(case):
    model = build(case)
    with torch.no_grad():
        hidden, states = model(dna_ids(2, 11), output_hidden_states=True)
    assert isinstance(states, tuple) and len(states) >= 2
    assert all(s.shape[:2] == (2, 11) for s in states)
    assert hidden.shape == (2, 11, model.hidden_size)


# --- save / load ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_save_pretrained_load_backbone_round_trip(case, tmp_path):
    model = build(case)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["arch"] == model.arch
    loaded = models.load_backbone(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.weights_origin == str(tmp_path / "m")
    assert models.build_backbone(config=TINY_CONFIGS[case]).weights_origin == "random"
    ids = dna_ids(2, 19)
    with torch.no_grad():
        assert torch.equal(hidden_of(model(ids)), hidden_of(loaded(ids)))
        assert torch.equal(model.lm_logits(hidden_of(model(ids))), loaded.lm_logits(hidden_of(loaded(ids))))
    again = type(model).from_pretrained(tmp_path / "m")
    assert type(again) is type(model)


def test_unknown_layout_names_the_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "something-else"}))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(BioseqError) as err:
        models.load_backbone(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "bioseq (" in msg
    for fam in models.FAMILIES:
        for layout in fam.layouts:
            assert layout.name in msg


# --- training modules -------------------------------------------------------------------------


def _grads_reach_every_parameter(module: torch.nn.Module, skip: str = "\0") -> None:
    dead = [n for n, p in module.named_parameters() if p.requires_grad and skip not in n and (
        p.grad is None or not torch.isfinite(p.grad).all())]
    assert not dead, f"no (finite) gradient for {dead[:5]}"
    zero = [n for n, p in module.named_parameters()
            if p.requires_grad and "embed" not in n and skip not in n and float(p.grad.abs().sum()) == 0.0]
    assert not zero, f"zero gradient for {zero[:5]}"


@pytest.mark.parametrize("case", CASES)
def test_language_model_step(case):
    from bioseq.models.lm import LanguageModel

    model = build(case).train()
    objective = "clm" if model.causal else "mlm"
    lm = LanguageModel(backbone=model, tokenizer="dna", objective=objective, mlm_probability=0.5)
    ids = dna_ids(4, 33)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    loss_sum, count = lm.token_losses(batch, torch.Generator().manual_seed(0))
    assert count > 0 and torch.isfinite(loss_sum)
    (loss_sum / count).backward()
    _grads_reach_every_parameter(lm)
    if not model.causal:
        with pytest.raises(BioseqError, match="causal"):
            LanguageModel(backbone=build(case), tokenizer="dna", objective="clm")


@pytest.mark.parametrize("case", CASES)
def test_sequence_classifier_step(case):
    from bioseq.finetune.classifier import SequenceClassifier

    clf = SequenceClassifier(backbone=build(case).train(), num_classes=3, pooling="mean")
    ids = dna_ids(4, 21)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 15:] = False
    logits = clf(ids, mask)
    assert logits.shape == (4, 3)
    clf._loss(logits, torch.tensor([0, 1, 2, 1])).backward()
    _grads_reach_every_parameter(clf, skip="lm_head")  # an untied LM head is not used by a classifier
    assert clf.hparams["backbone_config"] == clf.model.backbone.config.to_dict()


@pytest.mark.parametrize("case", CASES)
def test_bioseq_embed_runs(case, tmp_path):
    from bioseq.cli import main
    from bioseq.embed import read_embeddings

    build(case).save_pretrained(tmp_path / "m")
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nACGTACGTTTGA\n>b\nGGGCCCAT\n>c\nACGTNACGTACGTAAACCCGGGTTT\n")
    assert main(["embed", "-m", str(tmp_path / "m"), str(fasta), "-o", str(tmp_path / "e.h5"),
                 "--pool", "mean", "last", "-q"]) == 0
    data = read_embeddings(tmp_path / "e.h5", tokens=False)
    assert list(data["ids"]) == ["a", "b", "c"]
    assert data["mean"].shape == (3, build(case).hidden_size) and np.isfinite(data["mean"]).all()


# --- recurrent state --------------------------------------------------------------------------


def state_tensors(obj) -> list[torch.Tensor]:
    """Every tensor of a state (tensors in lists, tuples, dicts, dataclasses), in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        obj = [obj[k] for k in sorted(obj)]
    elif not isinstance(obj, (list, tuple)):
        return []
    return [t for item in obj for t in state_tensors(item)]


def recurrent_cases():
    return [c for c in CASES if is_recurrent(build(c))]


@pytest.mark.parametrize("case", recurrent_cases())
def test_step_equals_chunked_with_state_equals_full_forward(case):
    model = build(case)
    ids = dna_ids(2, 37)
    with torch.no_grad():
        full = hidden_of(model(ids))
        state = model.allocate_state(2)
        steps = []
        for t in range(ids.shape[1]):
            h, state = model.step(ids[:, t], state)
            steps.append(h)
        steps = torch.stack(steps, 1)
        state = model.allocate_state(2)
        pieces = []
        for lo, hi in ((0, 5), (5, 6), (6, 30), (30, 37)):
            h, state = model(ids[:, lo:hi], state=state)
            pieces.append(h)
        chunked = torch.cat(pieces, 1)
        _, final = model(ids, state=model.allocate_state(2))
    assert (steps - full).abs().max() <= TOL
    assert (chunked - full).abs().max() <= TOL
    a, b = state_tensors(state), state_tensors(final)  # the final states, whatever their structure
    assert len(a) == len(b) > 0
    assert max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)) <= TOL


def test_stateless_backbone_refuses_state():
    model = build("hyena")
    assert not model.supports_state
    with pytest.raises(BioseqError):
        model.allocate_state(1)
    with pytest.raises(BioseqError):
        model(dna_ids(1, 5), state=[])


def test_embed_long_stream_equals_full_forward_on_20kb(tmp_path):
    """``bioseq embed --long stream`` (chunked forward with state) == one full forward, and it takes
    no more than 2x the full forward's time."""
    from bioseq.cli import main
    from bioseq.embed import read_embeddings

    model = build("toy-recurrent")
    model.config.chunk = 64
    model.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 20_000))
    (tmp_path / "x.fa").write_text(">chr\n" + seq + "\n")
    t0 = time.perf_counter()
    rc = main(["embed", "-m", str(tmp_path / "m"), str(tmp_path / "x.fa"), "-o", str(tmp_path / "e.h5"),
               "--long", "stream", "--max-length", "1000", "--pool", "mean", "last", "--per-token",
               "--threads", "1", "-q"])
    stream_s = time.perf_counter() - t0
    assert rc == 0
    loaded = models.load_backbone(tmp_path / "m").eval()
    from bioseq.tokenizers import get_tokenizer

    ids = torch.from_numpy(np.asarray(get_tokenizer("dna").encode(seq), dtype=np.int64))[None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command ran
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            full = loaded(ids)[0]
        full_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    data = read_embeddings(tmp_path / "e.h5")
    assert np.abs(data["tokens"] - full.numpy()).max() <= TOL
    assert np.abs(data["mean"][0] - full.mean(0).numpy()).max() <= TOL
    assert np.abs(data["last"][0] - full[-1].numpy()).max() <= TOL
    print(f"20 kb: stream embed {stream_s:.2f} s (whole command), full forward {full_s:.2f} s")
    assert stream_s <= 2 * full_s + 1.5  # + start-up of the command (model load, file writing)


def test_flips_reverse_within_each_rows_length():
    """models/flips.py, the padding helpers every bidirectional / RC backbone uses."""
    from bioseq.models.flips import flip_index, flip_within, right_padded_lengths

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    lengths = right_padded_lengths(mask, 4)
    assert lengths.tolist() == [3, 4, 1]
    assert right_padded_lengths(torch.ones(2, 5, dtype=torch.bool), 5) is None
    with pytest.raises(BioseqError, match="right padding"):
        right_padded_lengths(torch.tensor([[0, 1, 1]], dtype=torch.bool), 3)
    x = torch.arange(12.0).reshape(3, 4)[..., None].expand(3, 4, 2)
    flipped = flip_within(x, lengths)
    assert flipped[..., 0].tolist() == [[2, 1, 0, 3], [7, 6, 5, 4], [8, 9, 10, 11]]
    assert torch.equal(flip_within(flipped, lengths, flip_index(lengths, 4)), x)
    assert torch.equal(flip_within(x, None), x.flip(1))
