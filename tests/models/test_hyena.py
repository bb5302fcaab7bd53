"""HyenaDNA backbone: parity with the reference fixture, presets, padding, filter cache, checkpointing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bioseq.checkpoints import convert_hyena_official
from bioseq.errors import BioseqError
from bioseq.models import build_backbone, load_backbone
from bioseq.models.hyena import PRESETS, HyenaConfig, HyenaDNA
from bioseq.ops.fftconv import filter_spectrum
from tests.conftest import shared_path

PRESET_PARAMS = {
    "hyenadna-tiny-1k": 436_096,
    "hyenadna-tiny-1k-d256": 1_641_088,
    "hyenadna-tiny-16k": 436_096,
    "hyenadna-small-32k": 3_277_568,
    "hyenadna-medium-160k": 6_550_528,
    "hyenadna-medium-450k": 6_550_528,
    "hyenadna-large-1m": 6_550_528,
}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(shared_path("fixtures", "fixture_hyena_tiny.pt"), weights_only=True)


@pytest.fixture(scope="module")
def fixture_model(fixture):
    model = HyenaDNA(HyenaConfig.from_official(fixture["config"]))
    model.load_converted_state_dict(convert_hyena_official(fixture["state_dict"]))
    return model.eval()


def tiny(**kw) -> HyenaDNA:
    cfg = dict(d_model=32, n_layer=2, l_max=300, filter_order=16, embed_dropout=0.0)
    cfg.update(kw)
    return HyenaDNA(HyenaConfig(**cfg))


# --- parity -----------------------------------------------------------------------------------------


def test_config_from_official(fixture):
    cfg = HyenaConfig.from_official(fixture["config"])
    assert (cfg.d_model, cfg.n_layer, cfg.d_inner, cfg.l_max, cfg.emb_dim, cfg.filter_order) == (
        128, 2, 512, 1026, 5, 64)
    assert cfg.padded_vocab_size == fixture["padded_vocab_size"] == 16
    assert cfg.activation_freq == 10 and cfg.modulation_shift == 0.05 and cfg.residual_in_fp32
    assert cfg == PRESETS["hyenadna-tiny-1k"]


def test_fixture_parity_fp32(fixture, fixture_model):
    ids = fixture["input_ids"]
    assert (ids[1, :40] == 4).all()  # row 1 is left-padded: it must match too
    with torch.no_grad():
        h = fixture_model(ids)
        logits = h @ fixture_model.embed_tokens.weight.T
    assert h.shape == (2, 300, 128) and logits.shape == (2, 300, 16)
    for row in (0, 1):
        assert (h[row] - fixture["hidden_states"][row]).abs().max() <= 1e-4
        assert (logits[row] - fixture["logits"][row]).abs().max() <= 1e-4


def test_fixture_parity_fp64(fixture, fixture_model):
    model = HyenaDNA(fixture_model.config)
    model.load_state_dict(fixture_model.state_dict())
    model = model.double().eval()
    with torch.no_grad():
        h = model(fixture["input_ids"])
        logits = h @ model.embed_tokens.weight.T
    assert h.dtype == torch.float64
    assert (h - fixture["hidden_states_fp64"]).abs().max() <= 1e-8
    assert (logits - fixture["logits_fp64"]).abs().max() <= 1e-8


def test_fixture_intermediates(fixture, fixture_model):
    """Per-layer wiring: filter k, mixer input/output and the residual stream after each block."""
    inter, seen = fixture["intermediates"], {}
    hooks = [blk.mixer.register_forward_hook(lambda m, a, out, i=i: seen.update({i: (a[0], out)}))
             for i, blk in enumerate(fixture_model.layers)]
    try:
        with torch.no_grad():
            _, states = fixture_model(fixture["input_ids"], output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    assert len(states) == 3
    assert (states[0] - inter["embeddings"]).abs().max() <= 1e-6
    for i, blk in enumerate(fixture_model.layers):
        k = blk.mixer.filter_fn(300)
        assert (k.T - inter[f"layers.{i}.filter_k"]).abs().max() <= 1e-5
        assert (seen[i][0] - inter[f"layers.{i}.mixer_in"]).abs().max() <= 1e-4
        assert (seen[i][1] - inter[f"layers.{i}.mixer_out"]).abs().max() <= 1e-4
        stream = inter[f"layers.{i}.hidden"] + inter[f"layers.{i}.residual"]
        assert (states[i + 1] - stream).abs().max() <= 1e-4


# --- presets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESET_PARAMS))
def test_preset_parameter_counts(name):
    # Parameters do not depend on l_max (only the recomputed, unsaved filter buffers do), so count
    # with a short l_max: the 1M-position buffers of large-1m are not needed for this.
    model = build_backbone(preset=name, l_max=64)
    assert model.num_parameters() == PRESET_PARAMS[name]
    assert model.vocab_size == 16 and model.config.d_model == PRESETS[name].d_model
    assert all(k.endswith((".z", ".t", ".deltas")) for k, _ in model.named_buffers())
    assert not any(k.endswith((".z", ".t", ".deltas")) for k in model.state_dict())


def test_load_backbone_preset_is_random_init():
    model = load_backbone("hyenadna-tiny-1k")
    assert isinstance(model, HyenaDNA) and model.num_parameters() == 436_096
    with pytest.raises(BioseqError, match="neither a checkpoint directory nor a preset"):
        load_backbone("hyenadna-nonexistent")


# --- behaviour ------------------------------------------------------------------------------------


def test_right_padding_never_changes_real_tokens():
    model = tiny().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 12, (3, 120), generator=g)
    lengths = [120, 77, 5]
    padded = ids.clone()
    for b, n in enumerate(lengths):
        padded[b, n:] = 4
    with torch.no_grad():
        full = model(padded, attention_mask=padded != 4)
        for b, n in enumerate(lengths):
            alone = model(ids[b : b + 1, :n])
            assert (full[b, :n] - alone[0]).abs().max() <= 1e-5


def test_inputs_embeds_matches_input_ids():
    model = tiny().eval()
    ids = torch.randint(7, 12, (2, 50))
    with torch.no_grad():
        assert torch.allclose(model(ids), model(inputs_embeds=model.embed_tokens(ids)), atol=1e-6)


def test_length_above_l_max_is_a_clear_error():
    model = tiny(l_max=64)
    with pytest.raises(BioseqError, match="exceeds l_max=64"):
        model(torch.full((1, 65), 7))


def test_filter_cache_reused_and_invalidated_by_weight_edits():
    model = tiny().eval()
    filt = model.layers[0].mixer.filter_fn
    ids = torch.randint(7, 12, (2, 40))
    with torch.no_grad():
        y0 = model(ids)
        k0 = filt(40)
        assert filt(40) is k0  # cached
        kf0 = filt.spectrum(40)  # the filter's FFT is cached beside it and matches a fresh one
        assert filt.spectrum(40) is kf0 and torch.allclose(kf0, filter_spectrum(k0, 40))
        uncached = tiny().eval()
        uncached.load_state_dict(model.state_dict())
        uncached.enable_filter_cache(False)
        assert uncached.layers[0].mixer.filter_fn.spectrum(40) is None
        torch.testing.assert_close(uncached(ids), y0, rtol=1e-6, atol=1e-6)
        filt.linears[0].weight.add_(0.05)  # in-place weight edit: version counter changes
        k1 = filt(40)
        assert k1 is not k0 and torch.allclose(k1, filt.compute(40))
        assert torch.allclose(filt.spectrum(40), filter_spectrum(k1, 40))
        y1 = model(ids)
    assert not torch.allclose(y0, y1)
    # load_state_dict (copy_ under no_grad) invalidates too
    with torch.no_grad():
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["layers.0.mixer.filter_fn.freq"] += 1.0
        model.load_state_dict(state)
        assert torch.allclose(filt(40), filt.compute(40))
        k2 = filt(40)
    model.train()
    assert filt._cache == {}
    k_train = filt(40)  # training mode: recomputed each call, with a graph
    assert k_train.requires_grad and k_train is not k2 and filt._cache == {}


def test_filter_cache_off_when_filter_needs_grad_and_switch():
    model = tiny().eval()
    filt = model.layers[0].mixer.filter_fn
    k = filt(30)  # eval but grad enabled and filter trainable: not cached
    assert k.requires_grad and filt._cache == {}
    for p in model.parameters():
        p.requires_grad_(False)  # frozen backbone (soft prompts): cacheable even with grad on
    assert filt(30) is filt(30)
    model.enable_filter_cache(False)
    with torch.no_grad():
        assert filt(30) is not filt(30)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    ref = tiny()
    ckpt = tiny(gradient_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    ids = torch.randint(7, 12, (2, 64))
    for m in (ref, ckpt):
        m.train()
        m(ids).pow(2).mean().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


def test_no_weight_decay_marks_filter_parameters():
    model = tiny()
    marked = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert "layers.0.mixer.filter_fn.freq" in marked and "layers.1.mixer.filter_fn.bias" in marked
    assert "layers.0.mixer.filter_fn.linears.3.weight" in marked
    assert "layers.0.mixer.in_proj.weight" not in marked and "embed_tokens.weight" not in marked


def test_bf16_autocast_forward_is_close():
    model = tiny().eval()
    ids = torch.randint(7, 12, (2, 100))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1


def test_hyena_order_3_runs():
    model = tiny(hyena_order=3)
    assert model.layers[0].mixer.in_proj.out_features == 4 * 32
    y = model(torch.randint(7, 12, (1, 33)))
    assert y.shape == (1, 33, 32)


def test_config_roundtrip_and_unknown_field():
    cfg = dataclasses.replace(PRESETS["hyenadna-small-32k"], gradient_checkpointing=True)
    assert HyenaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BioseqError, match="unknown field"):
        HyenaConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_mlp_recomputed_gelu_gradients():
    from bioseq.models.hyena import _GeluLinear

    g = torch.Generator().manual_seed(0)
    shapes = ((2, 3, 6), (4, 6), (4,))
    args = [torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]
    assert torch.autograd.gradcheck(_GeluLinear.apply, args, fast_mode=True)


def test_benchmark_script_tiny_run(capsys):
    """benchmarks/hyena.py end to end at a tiny length (each row in its own process)."""
    import runpy

    main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks" / "hyena.py"))["main"]
    assert main(["--lengths", "33", "--repeats", "1", "--threads", "1", "--malloc", "steady"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("    33")]
    assert [r[1:4] for r in rows] == [["bioseq", "fwd", "cache"], ["bioseq", "fwd", "no-cache"],
                                     ["bioseq", "fwd+bwd", "-"]]
    assert all(float(r[4]) > 0 and float(r[8]) > 0 for r in rows)  # times and peak RSS were measured


@pytest.mark.parametrize("preset,alphabet,text", [("hyena-tiny-protein", "protein", "MKVLAAGIVGLLLAQ*"),
                                                   ("hyena-tiny-smiles", "smiles", None)])
def test_protein_and_smiles_presets_embed(tmp_path, preset, alphabet, text):
    """Presets for the other alphabets: `bioseq embed -m <preset>` runs on a protein FASTA / a SMILES file."""
    from bioseq.cli import main

    if text is None:
        src = tmp_path / "m.smi"
        src.write_text("CCO ethanol\nc1ccccc1 benzene\n")
        args = ["--smiles"]
    else:
        src = tmp_path / "p.faa"
        src.write_text(f">p1\n{text}\n>p2\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
        args = []
    model = load_backbone(preset)
    assert model.alphabet == alphabet and model.weights_origin == "random"
    if text is None:  # a SMILES model needs the vocabulary saved beside its weights
        from bioseq.tokenizers import SmilesTokenizer

        model.save_pretrained(tmp_path / "m", tokenizer=SmilesTokenizer.build(["CCO", "c1ccccc1"]))
        spec = str(tmp_path / "m")
    else:
        spec = preset
    assert main(["embed", "-m", spec, str(src), *args, "-o", str(tmp_path / "e.h5"), "-q"]) == 0
