"""xLSTM backbones: parity with the ``xlstm`` package and the Bio-xLSTM reference fixtures (loaded through
their foreign layouts), reverse-complement equivariance, padding invariance and the exact recurrent state."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bioseq import checkpoints as ckpt
from bioseq.errors import BioseqError
from bioseq.models import PRESETS, build_backbone, load_backbone
from bioseq.models.xlstm import XLSTM, XLSTMConfig, convert_foreign_state_dict, flip_within

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes: one thread is faster


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def _check_grads(model, fx_grads, config):
    want = convert_foreign_state_dict(fx_grads, config, grads=True)
    got = dict(model.named_parameters())
    assert set(want) == set(got)
    for name, g in want.items():
        rel = _max_diff(got[name].grad, g) / max(g.abs().max().item(), 1e-12)
        assert rel <= TOL, f"{name}: relative gradient difference {rel:.2e}"


def _fixture(shared, name):
    return torch.load(shared("fixtures", name), weights_only=True)


# --------------------------------------------------------------------------------------------------
# the xlstm package: xLSTMLMModel state_dict + its config
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,config", [("fixture_xlstm_tiny.pt", "config"),
                                         ("fixture_xlstm_tiny_slstm.pt", "config_full")],
                         ids=["mlstm", "mlstm+slstm"])
def test_xlstm_package_fixture(shared, tmp_path, name, config):
    fx = _fixture(shared, name)
    (tmp_path / "config.json").write_text(json.dumps(fx[config]))   # given, or dataclasses.asdict of it
    torch.save(fx["state_dict"], tmp_path / "pytorch_model.bin")
    model = load_backbone(tmp_path)
    assert isinstance(model, XLSTM) and model.causal and model.supports_state
    tokens = fx["tokens"]
    logits = model.lm_logits(model(tokens))
    assert _max_diff(logits, fx["logits"]) <= TOL
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - fx["loss"].item()) <= TOL * abs(fx["loss"].item())
    loss.backward()
    _check_grads(model, fx["grads"], model.config)
    with torch.no_grad():
        state = model.allocate_state(tokens.shape[0])
        steps = []
        for t in range(tokens.shape[1]):
            h, state = model.step(tokens[:, t], state)
            steps.append(model.lm_logits(h))
    assert _max_diff(torch.stack(steps, 1), fx["step_logits"]) <= TOL


# --------------------------------------------------------------------------------------------------
# DNA-xLSTM (Lightning checkpoints: 'model.backbone.' keys) and Prot-xLSTM (pytorch_model.bin)
# --------------------------------------------------------------------------------------------------

DNA_CASES = {  # id: (file, variant, sLSTM kernel layout)
    "causal": ("fixture_dnaxlstm_causal_tiny.pt", None, "vanilla"),
    "causal-plain": ("fixture_dnaxlstm_causal_tiny.pt", "plain", "vanilla"),
    "bidir": ("fixture_dnaxlstm_bidir_tiny.pt", None, "vanilla"),
    "bidir-cuda-kernel": ("fixture_dnaxlstm_bidir_tiny.pt", None, "cuda"),
    "bidir-mlstm-only": ("fixture_dnaxlstm_bidir_tiny.pt", "mlstm_only", "vanilla"),
    "bidir-alternating": ("fixture_dnaxlstm_bidir_tiny.pt", "alternating", "cuda"),
    "bidir-native-mlstm": ("fixture_dnaxlstm_bidir_tiny.pt", "native_mlstm", "vanilla"),
    "rcps": ("fixture_dnaxlstm_rcps_tiny.pt", None, "vanilla"),
    "rcps-cuda-kernel": ("fixture_dnaxlstm_rcps_tiny.pt", None, "cuda"),
}


def _dna_case(fx, variant, layout):
    case = fx if variant is None else fx["variants"][variant]
    state = dict(case["state_dict"])
    if layout == "cuda":          # the layout of the released (CUDA-trained) sLSTM kernels
        state.update(case["slstm_cuda_layout"])
    return case, state


@pytest.mark.parametrize("case_id", list(DNA_CASES))
def test_dna_xlstm_fixture(shared, tmp_path, case_id):
    file, variant, layout = DNA_CASES[case_id]
    fx = _fixture(shared, file)
    case, state = _dna_case(fx, variant, layout)
    (tmp_path / "config.json").write_text(json.dumps(case["config"]))
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, tmp_path / "last.ckpt")
    model = load_backbone(tmp_path)
    assert model.causal == (not case["config"]["bidirectional"])
    hidden = model(fx["input_ids"])
    logits = model.lm_logits(hidden)
    assert _max_diff(hidden, case["hidden"]) <= TOL
    assert _max_diff(logits, case["logits"]) <= TOL
    if "logits_rc" in case:
        assert _max_diff(model.lm_logits(model(fx["input_ids_rc"])), case["logits_rc"]) <= TOL
    loss = F.cross_entropy(logits.flatten(0, 1), fx["targets"].flatten(), ignore_index=4)
    assert abs(loss.item() - case["loss"].item()) <= TOL * abs(case["loss"].item())
    if variant is None and layout == "vanilla":
        loss.backward()
        _check_grads(model, fx["grads"], model.config)


def test_prot_xlstm_fixture(shared, tmp_path):
    fx = _fixture(shared, "fixture_protxlstm_tiny.pt")
    (tmp_path / "config.json").write_text(json.dumps(fx["config_full"]))   # what its save_pretrained writes
    torch.save(fx["state_dict"], tmp_path / "pytorch_model.bin")
    model = load_backbone(tmp_path)
    assert model.config.rope == "inner" and model.causal
    ids, pos = fx["input_ids"], fx["position_ids"]
    hidden = model(ids, position_ids=pos)
    logits = model.lm_logits(hidden)
    assert _max_diff(hidden, fx["hidden"]) <= TOL
    assert _max_diff(logits, fx["logits"]) <= TOL
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), fx["labels"][:, 1:].flatten())
    assert abs(loss.item() - fx["loss"].item()) <= TOL * fx["loss"].item()
    loss.backward()
    _check_grads(model, fx["grads"], model.config)
    with torch.no_grad():
        state, steps = model.allocate_state(2), []
        for t in range(ids.shape[1]):
            h, state = model.step(ids[:, t], state, position_ids=pos[:, t])
            steps.append(model.lm_logits(h))
        assert _max_diff(torch.stack(steps, 1), fx["step_logits"]) <= TOL
        h, state = model(ids[:, :64], position_ids=pos[:, :64], state=model.allocate_state(2))
        out = [model.lm_logits(h)]
        for t in range(64, ids.shape[1]):
            h, state = model.step(ids[:, t], state, position_ids=pos[:, t])
            out.append(model.lm_logits(h)[:, None])
        assert _max_diff(torch.cat(out, 1), fx["logits_prefill_step"]) <= TOL


def test_bad_slstm_kernel_is_one_line_error(shared, tmp_path):
    fx = _fixture(shared, "fixture_dnaxlstm_bidir_tiny.pt")
    state = dict(fx["state_dict"])
    key = "backbone.xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"
    state[key] = state[key][:, :8]
    (tmp_path / "config.json").write_text(json.dumps(fx["config"]))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ckpt.CheckpointError, match="recurrent kernel of shape"):
        load_backbone(tmp_path)


# --------------------------------------------------------------------------------------------------
# bioseq's own models: RC equivariance, padding, recurrent state, save/load
# --------------------------------------------------------------------------------------------------

TINY = dict(arch="xlstm", d_model=32, n_layer=2, vocab_size=12, num_heads=2, chunk_size=8,
            round_proj_up_to_multiple_of=16, ffn_round_proj_up_to_multiple_of=16, slstm_num_heads=4)
VARIANTS = {
    "causal": dict(),
    "causal-slstm-rope": dict(slstm_at=[1], rope="head"),
    "inner-rope": dict(rope="inner"),
    "bidir": dict(slstm_at=[1], bidirectional=True, rope="head"),
    "alternating": dict(slstm_at=[0], bidirectional=True, bidirectional_alternating=True),
    "native-mlstm": dict(slstm_at=[1], bidirectional=True, mlstm_bidirectional="native"),
    "rcps": dict(slstm_at=[1], bidirectional=True, rcps=True),
    "conjoin": dict(slstm_at=[0], rc_conjoin=True),
}


def _perturbed(**overrides):
    model = build_backbone(config={**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_rcps_is_rc_equivariant_with_multihead_slstm():
    model = _perturbed(slstm_at=[0, 1], bidirectional=True, rcps=True, n_layer=3)
    assert model.hidden_size == 64 and model.config.slstm_num_heads == 4
    comp = model.complement_map
    ids = torch.randint(7, 12, (2, 40))
    ids_rc = comp[ids.flip(1)]
    with torch.no_grad():
        h, h_rc = model(ids), model(ids_rc)
        assert _max_diff(h_rc, h.flip(1, 2)) <= 1e-5
        assert _max_diff(model.lm_logits(h_rc), model.lm_logits(h).flip(1)[..., comp]) <= 1e-5
        # the released models' behaviour is reproducible, and it is not equivariant
        model.config.rcps_reference_slstm_norm = True
        h, h_rc = model(ids), model(ids_rc)
        assert _max_diff(h_rc, h.flip(1, 2)) > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_never_changes_real_tokens(variant):
    model = _perturbed(**VARIANTS[variant])
    ids = torch.randint(7, 12, (3, 30))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 21:] = False
    mask[2, 9:] = False
    padded = ids.masked_fill(~mask, 4)
    with torch.no_grad():
        batch = model(padded, attention_mask=mask)
        for row, n in enumerate(mask.sum(1).tolist()):
            alone = model(ids[row:row + 1, :n])
            assert _max_diff(batch[row:row + 1, :n], alone) <= 1e-5


STATEFUL = {"mlstm": dict(), "slstm-head-rope": dict(slstm_at=[1], rope="head"),
            "inner-rope": dict(slstm_at=[0], rope="inner")}


@pytest.mark.parametrize("variant", list(STATEFUL))
def test_step_equals_chunked_with_state_equals_full_forward(variant):
    model = _perturbed(**STATEFUL[variant])
    ids = torch.randint(0, 12, (2, 37))
    with torch.no_grad():
        full = model(ids)
        state, parts = model.allocate_state(2), []
        for a, b in [(0, 5), (5, 22), (22, 23), (23, 37)]:
            h, state = model(ids[:, a:b], state=state)
            parts.append(h)
        assert _max_diff(torch.cat(parts, 1), full) <= 1e-5
        state, steps = model.allocate_state(2), []
        for t in range(ids.shape[1]):
            h, state = model.step(ids[:, t], state)
            steps.append(h)
        assert _max_diff(torch.stack(steps, 1), full) <= 1e-5


def test_bidirectional_models_have_no_state():
    model = build_backbone(config={**TINY, "bidirectional": True})
    assert not model.causal and not model.supports_state
    with pytest.raises(BioseqError):
        model.allocate_state(1)
    with pytest.raises(BioseqError):
        model(torch.zeros(1, 4, dtype=torch.long), state={})


def test_left_padding_is_refused_by_bidirectional_models():
    model = build_backbone(config={**TINY, "bidirectional": True})
    mask = torch.tensor([[False, True, True]])
    with pytest.raises(BioseqError, match="right padding"):
        model(torch.full((1, 3), 7), attention_mask=mask)


@pytest.mark.parametrize("variant", ["causal-slstm-rope", "rcps"])
def test_save_and_load_round_trip(tmp_path, variant):
    model = _perturbed(**VARIANTS[variant])
    model.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path)
    ids = torch.randint(7, 12, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
        assert torch.equal(model.lm_logits(model(ids)), loaded.lm_logits(loaded(ids)))


def test_flip_within_keeps_padding_in_place():
    x = torch.arange(10).view(2, 5)
    assert flip_within(x, torch.tensor([5, 3])).tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


@pytest.mark.parametrize("preset,low,high", [
    ("dna-xlstm-500k-1k", 0.4e6, 0.6e6), ("dna-xlstm-2m-32k", 1.5e6, 2.5e6),
    ("prot-xlstm-26m", 24e6, 28e6), ("prot-xlstm-102m", 98e6, 106e6),
    ("chem-xlstm-1.6m", 1.5e6, 1.7e6), ("chem-xlstm-14.6m", 14e6, 15.2e6)])
def test_released_sizes(preset, low, high):
    with torch.device("meta"):
        model = XLSTM(PRESETS[preset][1])
    assert low <= model.num_parameters() <= high


def test_config_rejects_unknown_and_inconsistent_fields():
    with pytest.raises(BioseqError, match="unknown field"):
        XLSTMConfig.from_dict({"d_model": 32, "n_heads": 2})
    with pytest.raises(BioseqError, match="slstm_at"):
        XLSTMConfig(n_layer=2, slstm_at=[2])
    with pytest.raises(BioseqError, match="rcps_reference_slstm_norm"):
        XLSTMConfig(rcps_reference_slstm_norm=True)
    with pytest.raises(BioseqError, match="inner width of 0"):  # 2 x 16 rounds down to a multiple of 64
        XLSTMConfig(d_model=16, round_proj_up_dim_up=False)


def test_fim_layout_reproduces_the_prot_xlstm_collator(shared):
    """Rebuild the fixture's first context (3 proteins, spans read off the fixture) with homolog_context."""
    from bioseq.models.xlstm import homolog_context

    fx = _fixture(shared, "fixture_protxlstm_tiny.pt")
    token_id = {t: int(i) for i, t in fx["id_to_token"].items()}
    proteins = [[0] + [token_id[a] for a in seq] for seq in fx["protein_strings"][0]]
    proteins = [proteins[0], proteins[2], proteins[1]]          # the order the collator drew
    ids, pos = homolog_context(proteins, [[(5, 6), (17, 21)], [(51, 52)], []])
    assert ids[:128] == fx["input_ids"][0].tolist()
    assert pos[:128] == fx["position_ids"][0].tolist()


def test_prot_xlstm_tokenizer_is_the_reference_vocabulary(shared, tmp_path):
    """``get_tokenizer("prot-xlstm")`` has the reference's 38 ids; it rebuilds the fixture's context, and
    a loaded Prot-xLSTM (foreign layout or a preset) comes with it."""
    from bioseq.models import load_tokenizer_for
    from bioseq.models.xlstm import homolog_context
    from bioseq.tokenizers import get_tokenizer

    fx = _fixture(shared, "fixture_protxlstm_tiny.pt")
    tok = get_tokenizer("prot-xlstm")
    assert tok.vocab == [fx["id_to_token"][i] for i in range(len(fx["id_to_token"]))]
    assert (tok.cls_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 32)
    assert list(tok.fim_mask_ids) == [33, 34, 35, 36, 37]
    seqs = fx["protein_strings"][0]
    proteins = [tok.encode(seqs[i], add_cls=True).tolist() for i in (0, 2, 1)]
    ids, pos = homolog_context(proteins, [[(5, 6), (17, 21)], [(51, 52)], []], mask_ids=tok.fim_mask_ids,
                               eos_id=tok.eos_id)
    assert ids[:128] == fx["input_ids"][0].tolist() and pos[:128] == fx["position_ids"][0].tolist()
    assert tok.decode(proteins[0]) == seqs[0]
    (tmp_path / "config.json").write_text(json.dumps(fx["config_full"]))
    torch.save(fx["state_dict"], tmp_path / "pytorch_model.bin")
    assert load_tokenizer_for(load_backbone(tmp_path)).name == "prot-xlstm"
    assert load_tokenizer_for(build_backbone("xlstm", "prot-xlstm-tiny")).vocab_size == 38
    with pytest.raises(BioseqError, match="more tokens than vocab_size"):
        XLSTMConfig(vocab_size=16, tokenizer="prot-xlstm")


def test_fim_spans_are_valid():
    import numpy as np

    from bioseq.models.xlstm import fim_layout, fim_spans

    rng = np.random.default_rng(0)
    for length in (2, 5, 40, 300):
        for _ in range(20):
            spans = fim_spans(length, rng)
            assert 1 <= len(spans) <= 5
            assert all(1 <= a < b <= length for a, b in spans)
            assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
            ids = list(range(100, 100 + length))
            out, pos = fim_layout(ids, spans, [33, 34, 35, 36, 37], 2)
            assert sorted(t for t in out if t >= 100) == ids and len(out) == len(pos)


def test_embed_long_stream_equals_full_forward_on_20kb(tmp_path):
    """``bioseq embed --long stream`` (chunked forward with state) == one full forward (1e-4), 20 kb."""
    import numpy as np

    from bioseq.cli import main
    from bioseq.embed import read_embeddings
    from bioseq.tokenizers import get_tokenizer

    model = _perturbed(rope="head", chunk_size=64)       # sLSTM state is covered by the small test above
    model.save_pretrained(tmp_path / "m")
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 20_000))
    (tmp_path / "x.fa").write_text(">chr\n" + seq + "\n")
    assert main(["embed", "-m", str(tmp_path / "m"), str(tmp_path / "x.fa"), "-o", str(tmp_path / "e.h5"),
                 "--long", "stream", "--max-length", "1000", "--pool", "mean", "last", "--per-token",
                 "--threads", "1", "-q"]) == 0
    ids = torch.as_tensor(np.asarray(get_tokenizer("dna").encode(seq), dtype=np.int64))[None]
    with torch.no_grad():
        full = load_backbone(tmp_path / "m")(ids)[0].numpy()
    data = read_embeddings(tmp_path / "e.h5")
    assert np.abs(data["tokens"] - full).max() <= TOL
    assert np.abs(data["mean"][0] - full.mean(0)).max() <= TOL
    assert np.abs(data["last"][0] - full[-1]).max() <= TOL
