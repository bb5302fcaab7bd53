"""Caduceus: the released layouts load unchanged and reproduce the original code's fixtures (logits,
hidden, reverse-complement outputs, gradients); RC equivariance, post-hoc conjoining and padding
invariance with random weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models import ARCHITECTURES, PRESETS, build_backbone, load_backbone
from bioseq.models.caduceus import Caduceus, CaduceusConfig, SeqFlip
from bioseq.tokenizers import get_tokenizer

VARIANTS = ["ph", "ps", "ps_nofuse"]
TINY = {
    "ph": dict(arch="caduceus", d_model=16, n_layer=2, d_state=4, rcps=False),
    "ps": dict(arch="caduceus", d_model=16, n_layer=2, d_state=4, rcps=True, fused_add_norm=True),
    "ps_nofuse": dict(arch="caduceus", d_model=16, n_layer=2, d_state=4, rcps=True, fused_add_norm=False),
}


def _fixture(shared, variant):
    return torch.load(shared("fixtures", f"fixture_caduceus_{variant}_tiny.pt"), weights_only=True)


def _write_release_dir(fx, directory, weights="model.safetensors"):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({**fx["config"], "model_type": "caduceus"}))
    if weights == "model.safetensors":
        ckpt.save_safetensors(fx["state_dict"], directory / weights)
    else:
        torch.save(fx["state_dict"], directory / weights)
    return directory


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def _bioseq_name(key: str) -> str:
    """Released parameter name -> bioseq name (tied aliases -> their canonical parameter)."""
    if key in ("lm_head.weight", "lm_head.lm_head.weight") or "word_embeddings" in key:
        return "embed_tokens.weight"
    k = key[len("caduceus.backbone."):].replace(".submodule.", ".")
    for proj in ("in_proj", "out_proj"):
        k = k.replace(f"mamba_rev.{proj}", f"mamba_fwd.{proj}")
    return k


@pytest.fixture(params=VARIANTS)
def loaded(request, shared, tmp_path):
    fx = _fixture(shared, request.param)
    weights = "pytorch_model.bin" if request.param == "ph" else "model.safetensors"
    model = load_backbone(_write_release_dir(fx, tmp_path / "release", weights)).eval()
    return request.param, fx, model


def test_release_loads_and_matches_fixture(loaded):
    variant, fx, model = loaded
    assert isinstance(model, Caduceus) and not model.causal
    assert model.config.rcps == (variant != "ph") and model.config.fused_add_norm == (variant == "ps")
    assert model.hidden_size == (32 if variant == "ph" else 64)
    with torch.no_grad():
        hidden, states = model(fx["input_ids"], output_hidden_states=True)
        hidden_rc = model(fx["input_ids_rc"])
        logits, logits_rc = model.lm_logits(hidden), model.lm_logits(hidden_rc)
    assert _max_diff(hidden, fx["hidden"]) <= 1e-4
    assert _max_diff(logits, fx["logits"]) <= 1e-4
    assert _max_diff(hidden_rc, fx["hidden_rc"]) <= 1e-4
    assert _max_diff(logits_rc, fx["logits_rc"]) <= 1e-4
    assert _max_diff(states[0], fx["embeddings"]) <= 1e-6
    for i in range(model.config.n_layer):  # the residual stream after each block
        assert _max_diff(states[i + 1], fx["block_residual_out"][i] + fx["block_hidden_out"][i]) <= 1e-4


def test_release_gradients(loaded):
    variant, fx, model = loaded
    model.train()
    logits = model.lm_logits(model(fx["input_ids"])).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), fx["input_ids"].reshape(-1))
    assert abs(loss.item() - float(fx["loss"])) <= 1e-5
    loss.backward()
    params = dict(model.named_parameters())
    assert len(params) == len({_bioseq_name(k) for k in fx["grads"]})
    for key, ref in fx["grads"].items():
        ours = params[_bioseq_name(key)].grad
        assert _max_diff(ours, ref) / ref.abs().max().item() <= 1e-4, key


def test_fused_and_non_fused_add_norm_are_different_functions(shared):
    fx = _fixture(shared, "ps")
    ids = fx["input_ids"]
    cfg = CaduceusConfig(d_model=32, n_layer=2, vocab_size=16, rcps=True, fused_add_norm=False)
    from bioseq.models.caduceus import convert_release_state

    model = Caduceus(cfg).eval()
    model.load_converted_state_dict(convert_release_state(fx["state_dict"], cfg)[0])
    with torch.no_grad():
        assert _max_diff(model.lm_logits(model(ids)), fx["logits"]) > 1e-2


def test_tied_alias_that_differs_is_an_error(shared, tmp_path):
    fx = _fixture(shared, "ph")
    state = dict(fx["state_dict"])
    key = "caduceus.backbone.layers.0.mixer.mamba_rev.in_proj.weight"
    state[key] = state[key] + 1
    directory = _write_release_dir({**fx, "state_dict": state}, tmp_path / "bad")
    with pytest.raises(ckpt.CheckpointError, match="mamba_rev.in_proj"):
        load_backbone(directory)


# --------------------------------------------------------------------------------------------------
# Symmetries with random weights (odd lengths, right-padded batch)
# --------------------------------------------------------------------------------------------------


def _random_model(variant, **overrides):
    torch.manual_seed(0)
    model = build_backbone(config={**TINY[variant], **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _padded_batch(lengths=(17, 9, 3), L=17):
    ids = torch.full((len(lengths), L), 4)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(7, 12, (n,))
        mask[i, :n] = True
    return ids, mask


def _rc_padded(ids, mask):
    return get_tokenizer("dna").reverse_complement_padded(ids, mask)


@pytest.mark.parametrize("variant", ["ps", "ps_nofuse"])
def test_rcps_is_reverse_complement_equivariant(variant):
    model = _random_model(variant)
    ids, mask = _padded_batch()
    flip = SeqFlip(mask.sum(1), ids.shape[1])
    comp = model.embed_tokens.complement_map
    with torch.no_grad():
        h, h_rc = model(ids, attention_mask=mask), model(_rc_padded(ids, mask), attention_mask=mask)
        logits, logits_rc = model.lm_logits(h), model.lm_logits(h_rc)
    assert _max_diff(h_rc[mask], flip(h).flip(-1)[mask]) <= 1e-5
    assert _max_diff(logits_rc[mask], flip(logits)[..., comp][mask]) <= 1e-5


def test_ph_is_not_equivariant_but_conjoined_is_invariant():
    model = _random_model("ph", conjoin=True)
    ids, mask = _padded_batch()
    rc = _rc_padded(ids, mask)
    flip = SeqFlip(mask.sum(1), ids.shape[1])
    with torch.no_grad():
        h, h_rc = model(ids, attention_mask=mask), model(rc, attention_mask=mask)
        assert _max_diff(h_rc[mask], flip(h)[mask]) <= 1e-5          # conjoined: same features either strand
        model.train()                                                # conjoining is post hoc (eval only)
        h, h_rc = model(ids, attention_mask=mask), model(rc, attention_mask=mask)
    assert _max_diff(h_rc[mask], flip(h)[mask]) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_right_padding_never_changes_real_tokens(variant):
    model = _random_model(variant)
    ids, mask = _padded_batch()
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        for i, n in enumerate(mask.sum(1).tolist()):
            alone = model(ids[i: i + 1, :n])
            assert _max_diff(padded[i, :n], alone[0]) <= 1e-5


def test_left_padding_is_an_error():
    model = _random_model("ps")
    with pytest.raises(BioseqError, match="right padding"):
        model(torch.tensor([[4, 7, 8]]), attention_mask=torch.tensor([[False, True, True]]))


# --------------------------------------------------------------------------------------------------
# Config, presets, interface
# --------------------------------------------------------------------------------------------------


def test_registered_with_released_and_tiny_presets():
    assert ARCHITECTURES["caduceus"] == (CaduceusConfig, Caduceus)
    sizes = {name: (PRESETS[name][1].d_model, PRESETS[name][1].n_layer, PRESETS[name][1].rcps)
             for name in PRESETS if name.startswith("caduceus")}
    assert sizes["caduceus-ps-131k"] == (256, 16, True) and sizes["caduceus-ph-131k"] == (256, 16, False)
    assert sizes["caduceus-ps-1k"] == (256, 4, True) and sizes["caduceus-ps-1k-d118"] == (118, 4, True)
    model = load_backbone("caduceus-ps-tiny")
    assert model.vocab_size == 16 and model.hidden_size == 128 and not model.supports_state


def test_complement_map_matches_the_tokenizer():
    tok = get_tokenizer("dna")
    comp = CaduceusConfig().complement_ids()
    assert torch.equal(comp[: tok.vocab_size], tok.complement_map)
    assert torch.equal(comp[tok.vocab_size:], torch.arange(tok.vocab_size, len(comp)))


def test_no_recurrent_state():
    model = _random_model("ps")
    with pytest.raises(BioseqError, match="no recurrent state"):
        model(torch.tensor([[7, 8]]), state=object())


def test_bad_complement_map_is_an_error():
    with pytest.raises(BioseqError, match="involution"):
        CaduceusConfig(complement_map=[0, 2, 2])


@pytest.mark.parametrize("overrides", [dict(bidirectional_weight_tie=False),
                                       dict(bidirectional_strategy="ew_multiply")],
                         ids=["untied", "ew_multiply"])
def test_untied_and_multiplicative_variants_stay_equivariant(overrides):
    model = _random_model("ps", **overrides)
    names = {n for n, _ in model.named_parameters()}
    assert ("layers.0.mixer.mamba_rev.in_proj.weight" in names) == (not model.config.bidirectional_weight_tie)
    ids, mask = _padded_batch()
    flip = SeqFlip(mask.sum(1), ids.shape[1])
    with torch.no_grad():
        h, h_rc = model(ids, attention_mask=mask), model(_rc_padded(ids, mask), attention_mask=mask)
    assert _max_diff(h_rc[mask], flip(h).flip(-1)[mask]) <= 1e-5


def test_save_load_round_trip_and_soft_prompt_embeddings(tmp_path):
    model = _random_model("ps")
    model.save_pretrained(tmp_path / "m")
    again = load_backbone(tmp_path / "m").eval()
    ids = torch.randint(7, 12, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
        assert torch.equal(model(inputs_embeds=model.embed_tokens(ids)), model(ids))


def test_no_weight_decay_marks_and_gradient_checkpointing():
    model = _random_model("ps")
    marked = {n.split(".", 3)[-1] for n, p in model.named_parameters()
              if getattr(p, "_no_weight_decay", False)}
    assert marked == {"mamba_fwd.A_log", "mamba_fwd.D", "mamba_fwd.dt_proj.bias", "mamba_rev.A_log",
                      "mamba_rev.D", "mamba_rev.dt_proj.bias"}
    ids = torch.randint(7, 12, (2, 11))
    grads = []
    for flag in (False, True):
        m = _random_model("ps", gradient_checkpointing=flag).train()
        m.lm_logits(m(ids)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert _max_diff(grads[0], grads[1]) <= 1e-6
