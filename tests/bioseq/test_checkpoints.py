"""Checkpoint reading/writing: the three HyenaDNA directory layouts, the restricted unpickler, round trips."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from bioseq.checkpoints import (
    CheckpointError,
    Foreign,
    convert_hyena_official,
    detect_layout,
    load_state_dict_file,
    load_torch_restricted,
    resolve_pretrained,
)
from bioseq.errors import BioseqError
from bioseq.models import load_backbone, load_tokenizer_for
from bioseq.models.hyena import HyenaConfig, HyenaDNA
from tests.conftest import shared_path

HF_CONFIG = {  # the -hf port's config.json for hyenadna-tiny-1k-seqlen-hf
    "model_type": "hyenadna", "vocab_size": 12, "d_model": 128, "d_inner": 512, "n_layer": 2,
    "max_seq_len": 1026, "emb_dim": 5, "filter_order": 64, "num_inner_mlps": 2, "hyena_order": 2,
    "short_filter_order": 3, "activation_freq": 10, "train_freq": True, "use_bias": True,
    "embed_dropout": 0.1, "hyena_dropout": 0.0, "hyena_filter_dropout": 0.0, "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02, "pad_vocab_size_multiple": 8,
}


class OmegaLike:
    """Stands in for the omegaconf / user objects found in real Lightning hyper_parameters."""

    def __init__(self, content):
        self.content = content


class SubTensor(torch.Tensor):
    """A tensor subclass defined outside torch (comes back as a plain tensor)."""


class Evil:
    """Unpickling this would run a shell command (it must never be executed)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def fixture():
    return torch.load(shared_path("fixtures", "fixture_hyena_tiny.pt"), weights_only=True)


def official_state(fixture, prefix="model.", wrapped=False, share_freq=True):
    """The fixture weights as an official checkpoint holds them (aliases really shared, tied head)."""
    sd = OrderedDict()
    for k, v in fixture["state_dict"].items():
        if wrapped:
            k = k.replace(".mixer.", ".mixer.layer.", 1).replace(".mlp.", ".mlp.layer.", 1)
        sd[prefix + k] = v.clone()
    if share_freq:
        for k in list(sd):
            if k.endswith("implicit_filter.1.freq"):
                for j in (3, 5):
                    sd[k.replace(".1.freq", f".{j}.freq")] = sd[k]
    emb = next(v for k, v in sd.items() if k.endswith("word_embeddings.weight"))
    sd[prefix + "lm_head.weight"] = emb  # tied, as ConvLMHeadModel saves it
    return sd


def lightning_ckpt(state, extra_hparams=None):
    return {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.8.6", "state_dict": state,
            "hyper_parameters": {"model": OmegaLike({"d_model": 128}), **(extra_hparams or {})},
            "optimizer_states": [], "lr_schedulers": []}


def check_logits(model, fixture, head=None):
    model.eval()
    with torch.no_grad():
        h = model(fixture["input_ids"])
        logits = h @ (model.embed_tokens.weight if head is None else head).T
    assert (h - fixture["hidden_states"]).abs().max() <= 1e-4
    if head is None:
        assert (logits - fixture["logits"]).abs().max() <= 1e-4
    return logits


# --- the three layouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "checkpoint-wrapped"])
def test_official_lightning_dir(tmp_path, fixture, wrapped):
    path = tmp_path / "hyenadna-tiny-1k-seqlen"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(fixture["config"]))
    torch.save(lightning_ckpt(official_state(fixture, wrapped=wrapped)), path / "weights.ckpt")
    with pytest.raises(pickle.UnpicklingError):  # weights_only refuses the foreign hyper_parameters
        torch.load(path / "weights.ckpt", weights_only=True)
    assert detect_layout(path) == "official"
    model = HyenaDNA.from_pretrained(path)
    assert model.tie_word_embeddings and model.lm_head is None  # the tied lm_head is the embedding
    check_logits(model, fixture)
    assert isinstance(load_backbone(str(path)), HyenaDNA)


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_hf_dir_with_untied_head(tmp_path, fixture, weights):
    sd = official_state(fixture, prefix="hyena.", share_freq=weights == "pytorch_model.bin")
    head = sd["hyena.lm_head.weight"].clone() + 0.01  # untied
    del sd["hyena.lm_head.weight"]
    sd["lm_head.weight"] = head
    for k in [k for k in sd if k.endswith((".pos_emb.t", ".modulation.deltas"))]:
        del sd[k]  # the port keeps pos_emb.z (a parameter there); the others are rebuilt
    if weights == "model.safetensors":  # HF drops duplicate names of the shared Sin frequency
        for k in [k for k in sd if k.endswith((".3.freq", ".5.freq"))]:
            del sd[k]
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / weights))
    else:
        torch.save(sd, tmp_path / weights)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    assert detect_layout(tmp_path) == "hf"
    model = load_backbone(str(tmp_path))
    assert not model.tie_word_embeddings and torch.equal(model.lm_head.weight, head)
    logits = check_logits(model, fixture, head=model.lm_head.weight)
    with torch.no_grad():
        expected = fixture["hidden_states"] @ head.T
        assert (model.lm_logits(model(fixture["input_ids"])) - expected).abs().max() <= 1e-4
    assert (logits - expected).abs().max() <= 1e-4
    model.save_pretrained(tmp_path / "exported")  # the untied head is saved and loaded with the backbone
    again = load_backbone(tmp_path / "exported")
    assert not again.tie_word_embeddings and torch.equal(again.lm_head.weight, head)


def test_bioseq_dir_roundtrip(tmp_path, fixture):
    model = HyenaDNA(HyenaConfig.from_official(fixture["config"]))
    model.load_converted_state_dict(convert_hyena_official(fixture["state_dict"]))
    model.save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert not any(k.endswith((".z", ".t", ".deltas")) for k in stored)  # config-determined buffers
    assert sum(v.numel() for v in stored.values()) == 436_096  # each parameter once
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "hyena"
    assert detect_layout(tmp_path) == "bioseq"
    loaded = HyenaDNA.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    check_logits(loaded, fixture)


def test_roundtrip_random_model_with_overrides(tmp_path):
    cfg = HyenaConfig(d_model=32, n_layer=3, l_max=200, filter_order=16, vocab_size=30, alphabet="protein")
    model = HyenaDNA(cfg).eval()
    model.save_pretrained(tmp_path)
    loaded = HyenaDNA.from_pretrained(tmp_path, gradient_checkpointing=True).eval()
    assert loaded.config.gradient_checkpointing and loaded.vocab_size == 32
    ids = torch.randint(0, 30, (2, 77))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


# --- restricted unpickler --------------------------------------------------------------------------


def test_restricted_loader_never_runs_code(tmp_path, fixture):
    marker = tmp_path / "PWNED"
    state = official_state(fixture)
    path = tmp_path / "weights.ckpt"
    torch.save(lightning_ckpt(state, {"also": [OmegaLike(1), {1, 2}]}), path)
    loaded = load_torch_restricted(path)
    hp = loaded["hyper_parameters"]
    assert isinstance(hp["model"], Foreign) and hp["model"]._name == "OmegaLike"  # inert, not imported
    assert hp["also"][1] == {1, 2}
    assert loaded["global_step"] == 1000
    for k, v in state.items():
        assert torch.equal(loaded["state_dict"][k], v), k
    sd = load_state_dict_file(path)  # the public entry point: the state_dict tensors
    assert set(sd) == set(state)
    # a pickle naming a code-running global (here os.system) is refused outright, never called
    torch.save(lightning_ckpt(state, {"evil": Evil(marker)}), path)
    for load in (load_torch_restricted, load_state_dict_file):
        with pytest.raises(CheckpointError, match=r"weights.ckpt: refused: the pickle calls (posix|os)\.sys"):
            load(path)
    assert not marker.exists()


def test_restricted_loader_dtypes_views_and_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    obj = {"view": base[1:, 2:5], "t": base.T, "same": base, "half": torch.randn(3, dtype=torch.bfloat16),
           "long": torch.arange(5), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
           "param": torch.nn.Parameter(torch.ones(2)), "x": OmegaLike(0),
           "sub": torch.arange(3.0).as_subclass(SubTensor)}
    torch.save(obj, tmp_path / "a.pt")
    out = load_torch_restricted(tmp_path / "a.pt")
    for k in ("view", "t", "same", "half", "long", "bool", "scalar", "param"):
        assert out[k].dtype == obj[k].dtype and torch.equal(out[k], obj[k].detach()), k
    assert out["view"].untyped_storage().data_ptr() == out["same"].untyped_storage().data_ptr()
    assert type(out["sub"]) is torch.Tensor and torch.equal(out["sub"], torch.arange(3.0))


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_state_dict_file(tmp_path / "junk.ckpt")
    with zipfile.ZipFile(tmp_path / "empty.ckpt", "w") as z:
        z.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match="empty.ckpt"):
        load_state_dict_file(tmp_path / "empty.ckpt")
    torch.save({"no": "tensors"}, tmp_path / "nt.bin")
    with pytest.raises(CheckpointError, match="no tensor dictionary"):
        load_state_dict_file(tmp_path / "nt.bin")
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict_file(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a known preset"):
        resolve_pretrained(tmp_path / "nowhere")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, fixture):
    (tmp_path / "config.json").write_text(json.dumps({**fixture["config"], "n_layer": 3}))
    torch.save(lightning_ckpt(official_state(fixture)), tmp_path / "weights.ckpt")
    with pytest.raises(BioseqError, match="missing"):
        HyenaDNA.from_pretrained(tmp_path)
    # positional features that disagree with config.json (here: a different l_max) are refused
    cfg = {**fixture["config"], "layer": {**fixture["config"]["layer"], "l_max": 1024}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BioseqError, match="pos_emb|differs"):
        HyenaDNA.from_pretrained(tmp_path)


def test_convert_rejects_non_hyena_state():
    with pytest.raises(CheckpointError, match="not a HyenaDNA state dict"):
        convert_hyena_official({"encoder.weight": torch.zeros(2)})


def test_tokenizer_saved_beside_weights(tmp_path):
    from bioseq import tokenizers
    model = HyenaDNA(HyenaConfig(d_model=16, n_layer=1, l_max=64, filter_order=8, vocab_size=30,
                                 alphabet="protein"))
    assert load_tokenizer_for(model).name == "protein"  # no directory: the alphabet's default
    tok = tokenizers.get_tokenizer("dna", iupac="error")
    model.save_pretrained(tmp_path, tokenizer=tok)
    loaded = load_backbone(str(tmp_path))
    for src in (loaded, tmp_path):
        got = load_tokenizer_for(src)
        assert got.name == "dna" and got.to_dict() == tok.to_dict()


def test_preset_name_downloads_through_huggingface_hub(tmp_path, fixture, monkeypatch):
    """A preset / Hub id goes through huggingface_hub.snapshot_download (faked here: no network)."""
    import sys
    import types

    (tmp_path / "config.json").write_text(json.dumps(fixture["config"]))
    torch.save(lightning_ckpt(official_state(fixture)), tmp_path / "weights.ckpt")
    calls = []
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo_id, **kw: calls.append(repo_id) or str(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    model = HyenaDNA.from_pretrained("hyenadna-tiny-1k")
    assert calls == ["LongSafari/hyenadna-tiny-1k-seqlen"]
    check_logits(model, fixture)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed: a clear error
    with pytest.raises(CheckpointError, match="install huggingface_hub"):
        HyenaDNA.from_pretrained("LongSafari/hyenadna-small-32k-seqlen")


def test_restricted_loader_big_endian_archive(tmp_path):
    """Archives written on a big-endian machine carry byteorder=big: element bytes are swapped back."""
    import numpy as np

    t = torch.linspace(-3, 3, 7)
    torch.save({"t": t, "i": torch.arange(4), "x": OmegaLike(0)}, tmp_path / "le.pt")
    with zipfile.ZipFile(tmp_path / "le.pt") as src, zipfile.ZipFile(tmp_path / "be.pt", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                width = 4 if len(data) == 28 else 8  # the float32 record, the int64 record
                data = np.frombuffer(data, f"<u{width}").astype(f">u{width}").tobytes()
            dst.writestr(name, data)
    out = load_torch_restricted(tmp_path / "be.pt")
    assert torch.equal(out["t"], t) and torch.equal(out["i"], torch.arange(4))
