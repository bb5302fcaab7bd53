"""Mamba-1 / Mamba-2 backbones: parity with the transformers fixtures (outputs, recurrent steps, states,
gradients) loaded through both foreign layouts, and the exactness of the recurrent state."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models import ARCHITECTURES, PRESETS, build_backbone, load_backbone
from bioseq.models.mamba import Mamba, MambaConfig

FIXTURES = {"mamba1": "fixture_mamba_tiny.pt", "mamba2": "fixture_mamba2_tiny.pt"}
TINY = {
    "mamba1": dict(arch="mamba", d_model=32, n_layer=2, d_state=8, dt_rank=4),
    "mamba2": dict(arch="mamba", ssm_layer="mamba2", d_model=32, n_layer=2, d_state=8, headdim=16, ngroups=2,
                   chunk_size=8),
}


def _fixture(shared, variant):
    return torch.load(shared("fixtures", FIXTURES[variant]), weights_only=True)


def _to_bioseq_name(key: str) -> str:
    return "embed_tokens.weight" if key == "backbone.embeddings.weight" else key[len("backbone."):]


def _write_hf_dir(fx, directory):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(fx["config"]))
    ckpt.save_safetensors(fx["state_dict"], directory / "model.safetensors")
    return directory


def _write_mamba_ssm_dir(fx, directory, variant):
    c = fx["config"]
    ssm_cfg = dict(layer="Mamba1" if variant == "mamba1" else "Mamba2", d_state=c["state_size"],
                   d_conv=c["conv_kernel"], expand=c["expand"])
    if variant == "mamba1":
        ssm_cfg["dt_rank"] = c["time_step_rank"]
    else:
        ssm_cfg.update(headdim=c["head_dim"], ngroups=c["n_groups"], chunk_size=c["chunk_size"])
    config = dict(d_model=c["hidden_size"], d_intermediate=0, n_layer=c["num_hidden_layers"],
                  vocab_size=c["vocab_size"], ssm_cfg=ssm_cfg, attn_layer_idx=[], attn_cfg={}, rms_norm=True,
                  residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    state = {fx["key_map_to_mamba_ssm"][k]: v for k, v in fx["state_dict"].items()}
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(params=list(FIXTURES), ids=list(FIXTURES))
def loaded(request, shared, tmp_path):
    fx = _fixture(shared, request.param)
    model = load_backbone(_write_hf_dir(fx, tmp_path / "hf")).eval()
    return request.param, fx, model


def test_fixture_logits_and_hidden_states(loaded):
    variant, fx, model = loaded
    assert isinstance(model, Mamba) and model.config.ssm_layer == variant
    with torch.no_grad():
        h, states = model(fx["input_ids"], output_hidden_states=True)
        logits = model.lm_logits(h)
    assert _max_diff(logits, fx["logits"]) <= 1e-4
    assert _max_diff(logits, fx["logits_fp64"]) <= 1e-4
    # transformers' hidden_states: the residual stream after each block, then the final normed output
    for ours, ref in zip([*states[1:], h], fx["hidden_states"]):
        assert _max_diff(ours, ref) <= 1e-4


def test_fixture_step_prefill_and_final_states(loaded, one_thread):
    variant, fx, model = loaded
    ids = fx["input_ids"]
    B, L = ids.shape
    with torch.no_grad():
        state = model.allocate_state(B)
        stepped = []
        for t in range(L):
            h, state = model.step(ids[:, t], state)
            stepped.append(model.lm_logits(h))
        assert _max_diff(torch.stack(stepped, 1), fx["logits_step"]) <= 1e-4
        for i in range(model.config.n_layer):
            # transformers keeps the last d_conv conv inputs, bioseq the last d_conv - 1
            assert _max_diff(state.conv[i], fx["final_conv_state"][i][..., 1:]) <= 1e-5
            assert _max_diff(state.ssm[i], fx["final_ssm_state"][i]) <= 1e-5

        h_pre, state = model(ids[:, :100], state=model.allocate_state(B))
        logits = [model.lm_logits(h_pre)]
        for t in range(100, L):
            h, state = model.step(ids[:, t], state)
            logits.append(model.lm_logits(h)[:, None])
    assert _max_diff(torch.cat(logits, 1), fx["logits_prefill_step"]) <= 1e-4
    for i in range(model.config.n_layer):
        assert _max_diff(state.ssm[i], fx["final_ssm_state"][i]) <= 1e-5


def test_fixture_gradients(loaded):
    variant, fx, model = loaded
    model.train()
    ids = fx["input_ids"]
    logits = model.lm_logits(model(ids)).float()
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - fx["loss"].item()) <= 1e-5
    loss.backward()
    params = dict(model.named_parameters())
    for key, ref in fx["grads"].items():
        ours = params[_to_bioseq_name(key)].grad.reshape(ref.shape)
        assert _max_diff(ours, ref) / ref.abs().max().item() <= 1e-4, key


@pytest.mark.parametrize("variant", list(FIXTURES))
def test_fixture_loads_from_mamba_ssm_layout(shared, tmp_path, variant):
    fx = _fixture(shared, variant)
    model = load_backbone(_write_mamba_ssm_dir(fx, tmp_path / "ssm", variant)).eval()
    assert model.vocab_size == 16 and model.tie_word_embeddings
    with torch.no_grad():
        logits = model.lm_logits(model(fx["input_ids"][:, :64]))
    assert _max_diff(logits, fx["logits"][:, :64]) <= 1e-4


def test_unknown_layout_keys_are_one_error(shared, tmp_path):
    fx = _fixture(shared, "mamba1")
    directory = _write_hf_dir(fx, tmp_path / "hf")
    state = dict(fx["state_dict"], **{"backbone.extra.weight": torch.zeros(2)})
    ckpt.save_safetensors(state, directory / "model.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="extra"):
        load_backbone(directory)


# --------------------------------------------------------------------------------------------------
# The recurrent state is exact (random weights)
# --------------------------------------------------------------------------------------------------


def _random_model(variant, **overrides):
    torch.manual_seed(0)
    model = build_backbone(config={**TINY[variant], **overrides}).eval()
    with torch.no_grad():  # perturb so that unit norms and D = 1 hide nothing
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", list(TINY))
def test_step_equals_chunked_equals_full_forward(variant, one_thread):
    model = _random_model(variant)
    ids = torch.randint(7, 12, (2, 37))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(2)
        chunks = []
        for s, t in [(0, 5), (5, 6), (6, 23), (23, 37)]:  # odd sizes; a chunk of one token
            h, state = model(ids[:, s:t], state=state)
            chunks.append(h)
        chunked, chunk_state = torch.cat(chunks, 1), state
        state = model.allocate_state(2)
        steps = []
        for t in range(ids.shape[1]):
            h, state = model.step(ids[:, t], state)
            steps.append(h)
    assert _max_diff(chunked, full) <= 1e-5
    assert _max_diff(torch.stack(steps, 1), full) <= 1e-5
    for a, b in zip(chunk_state.ssm + chunk_state.conv, state.ssm + state.conv):
        assert _max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("variant", list(TINY))
def test_right_padding_changes_neither_outputs_nor_states(variant):
    model = _random_model(variant)
    lengths = [13, 7, 2]
    rows = [torch.randint(7, 12, (n,)) for n in lengths]
    ids = torch.full((3, 13), 4)
    mask = torch.zeros(3, 13, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, True
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        h_state, state = model(ids, attention_mask=mask, state=model.allocate_state(3))
        for i, r in enumerate(rows):
            alone, alone_state = model(r[None], state=model.allocate_state(1))
            assert _max_diff(padded[i, : len(r)], alone[0]) <= 1e-5
            assert _max_diff(h_state[i, : len(r)], alone[0]) <= 1e-5
            for a, b in zip(state.ssm + state.conv, alone_state.ssm + alone_state.conv):
                assert _max_diff(a[i], b[0]) <= 1e-5


def test_left_padding_with_a_state_is_an_error():
    model = _random_model("mamba1")
    mask = torch.tensor([[False, True, True]])
    with pytest.raises(BioseqError, match="right padding"):
        model(torch.tensor([[4, 7, 8]]), attention_mask=mask, state=model.allocate_state(1))


def test_state_batch_mismatch_is_an_error():
    model = _random_model("mamba2")
    with pytest.raises(BioseqError, match="rows"):
        model(torch.tensor([[7, 8]]), state=model.allocate_state(2))


# --------------------------------------------------------------------------------------------------
# Config, presets, init, checkpoints
# --------------------------------------------------------------------------------------------------


def test_registered_with_tiny_presets():
    assert ARCHITECTURES["mamba"] == (MambaConfig, Mamba)
    assert PRESETS["mamba-tiny"][1].ssm_layer == "mamba1"
    assert PRESETS["mamba2-tiny"][1].ssm_layer == "mamba2"
    model = load_backbone("mamba2-tiny")
    assert model.weights_origin == "random" and model.vocab_size == 16 and model.causal


@pytest.mark.parametrize("bad, match", [
    (dict(ssm_layer="mamba3"), "ssm_layer"),
    (dict(ssm_layer="mamba2", headdim=48), "headdim"),
    (dict(colour="blue"), "unknown field"),
])
def test_bad_configs_are_errors(bad, match):
    with pytest.raises(BioseqError, match=match):
        build_backbone(config={"arch": "mamba", "d_model": 32, **bad})


@pytest.mark.parametrize("variant", list(TINY))
def test_official_initialisation(variant):
    torch.manual_seed(0)
    cfg = MambaConfig(**{k: v for k, v in TINY[variant].items() if k != "arch"})
    model = Mamba(cfg)
    mixer = model.layers[0].mixer
    dt_bias = mixer.dt_proj.bias if variant == "mamba1" else mixer.dt_bias
    dt = F.softplus(dt_bias)
    assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    if variant == "mamba1":
        assert torch.allclose(mixer.A_log.exp(), torch.arange(1.0, cfg.d_state + 1).expand(cfg.d_inner, -1))
    else:
        assert mixer.A_log.exp().min() >= 1 and mixer.A_log.exp().max() <= 16
    # out_proj: kaiming-uniform bound 1/sqrt(fan_in), divided by sqrt(n_layer)
    bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.3)
    marked = {n.split(".")[-1] for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert marked == ({"A_log", "D", "bias"} if variant == "mamba1" else {"A_log", "D", "dt_bias"})


@pytest.mark.parametrize("variant", list(TINY))
def test_save_and_load_round_trip(variant, tmp_path):
    model = _random_model(variant, tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "m")
    again = load_backbone(tmp_path / "m").eval()
    ids = torch.randint(7, 12, (1, 9))
    with torch.no_grad():
        assert torch.equal(model.lm_logits(model(ids)), again.lm_logits(again(ids)))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(7, 12, (2, 11))
    grads = []
    for flag in (False, True):
        model = _random_model("mamba1", gradient_checkpointing=flag).train()
        model.lm_logits(model(ids)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert _max_diff(grads[0], grads[1]) <= 1e-6


@pytest.mark.parametrize("ssm_cfg, match", [
    (dict(layer="Mamba3"), "Mamba1 or Mamba2"),
    (dict(layer="Mamba2", headdim=16, dt_limit=[0.001, 0.1]), "dt_limit"),
    (dict(layer="Mamba2", headdim=16, activation="relu"), "activation"),
    (dict(layer="Mamba1", some_new_option=1), "some_new_option"),
], ids=["layer", "dt_limit", "activation", "unknown"])
def test_unsupported_mamba_ssm_configs_are_errors(ssm_cfg, match):
    from bioseq.models.mamba import config_from_mamba_ssm

    with pytest.raises(BioseqError, match=match):
        config_from_mamba_ssm(dict(d_model=64, n_layer=2, vocab_size=16, ssm_cfg=ssm_cfg))


def test_unsupported_transformers_configs_are_errors():
    from bioseq.models.mamba import config_from_hf

    base = dict(model_type="mamba2", hidden_size=64, num_hidden_layers=2, vocab_size=16, head_dim=16,
                num_heads=8)
    with pytest.raises(BioseqError, match="time_step_limit"):
        config_from_hf({**base, "time_step_limit": [0.0, 0.1]})
    with pytest.raises(BioseqError, match="num_heads"):
        config_from_hf({**base, "num_heads": 4})
    assert config_from_hf(base).nheads == 8


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(TINY))
def test_streaming_20kb_in_chunks_equals_one_forward(variant):
    """What ``bioseq embed --long stream`` does: 1,000-token chunks carried by the state."""
    model = _random_model(variant)
    ids = torch.randint(7, 12, (1, 20_000))
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(1)
        pieces = []
        for s in range(0, ids.shape[1], 1000):
            h, state = model(ids[:, s: s + 1000], attention_mask=torch.ones(1, 1000, dtype=torch.bool),
                             state=state)
            pieces.append(h)
    assert _max_diff(torch.cat(pieces, 1), full) <= 1e-4
