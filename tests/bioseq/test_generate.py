"""``bioseq generate`` and its engine (bioseq/generate.py): sampling rules, greedy decoding against full
forwards, determinism, EOS, constant memory, refusals, and the command end to end on tiny saved models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bioseq import cli, models
from bioseq import generate as gen
from bioseq.generate import GenerateError, SamplingOptions
from bioseq.tokenizers import NUM_SPECIAL, DnaTokenizer, SmilesTokenizer
from tests.models import toy_recurrent

DNA = DnaTokenizer()
V = DNA.vocab_size          # 12 real tokens; the backbones below have 16 embedding rows
EOS = DNA.eos_id
SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "O=C(O)c1ccccc1O", "C1CCCCC1", "CC(C)Cl", "CC#N",
          "COc1ccc(Br)cc1", "[Na+].[Cl-]"]


def toy_backbone():
    torch.manual_seed(0)
    return toy_recurrent.GatedRecurrence(toy_recurrent.GatedRecurrenceConfig(d_model=16, n_layer=2, chunk=8))


def build(name: str):
    """Small random backbones of every generative kind, in eval mode, with well-spread logits."""
    torch.manual_seed(0)
    if name == "toy":
        model = toy_backbone()
    elif name == "mamba":
        model = models.build_backbone(preset="mamba-tiny", d_model=32, n_layer=2)
    elif name == "mamba2":
        model = models.build_backbone(preset="mamba2-tiny", d_model=32, n_layer=2, headdim=16, chunk_size=8)
    elif name == "dna-xlstm":
        model = models.build_backbone(preset="dna-xlstm-tiny", d_model=32, chunk_size=8)
    elif name == "xlstm-slstm":
        model = models.build_backbone(preset="xlstm-tiny-slstm", d_model=32, chunk_size=8)
    else:
        raise KeyError(name)
    with torch.no_grad():   # logits spread enough to avoid near-ties, not so much that sampling is greedy
        head = model.lm_head if getattr(model, "lm_head", None) is not None else model.embed_tokens
        head.weight.mul_(0.3 if name == "toy" else 3.0)
    return model.eval()


KINDS = ["toy", "mamba", "mamba2", "dna-xlstm", "xlstm-slstm"]


@pytest.fixture(scope="module", params=KINDS)
def backbone(request):
    return build(request.param)


def run(model, prompt, n, seed=0, tokenizer=DNA, **kw):
    options = SamplingOptions(**{"max_new_tokens": 12, **kw})
    return list(gen.generate(model, tokenizer, [prompt], n, options, seed=seed))


def greedy_by_full_forward(model, prompt: list[int], steps: int) -> list[int]:
    """Argmax decoding with a full forward over the whole sequence at every step (no state)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model.lm_logits(model(torch.tensor([ids])))[0, -1, :V].clone()
            logits[:NUM_SPECIAL] = -math.inf
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


# --------------------------------------------------------------------------------------------------
# Decoding rules
# --------------------------------------------------------------------------------------------------


def test_top_k_1_equals_greedy_full_forward_decoding(backbone):
    prompt = [7, 8, 9, 10, 10, 8, 7, 9, 9]                   # 9 tokens: more than one mLSTM chunk of 8
    expected = greedy_by_full_forward(backbone, prompt, 12)
    for sample in run(backbone, prompt, 3, top_k=1, batch_size=2):
        assert sample.ids.tolist() == expected
    for sample in run(backbone, prompt, 2, temperature=0.0):
        assert sample.ids.tolist() == expected
    for sample in run(backbone, prompt, 2, top_p=1e-6):      # a nucleus of one token
        assert sample.ids.tolist() == expected


def test_same_seed_same_samples_other_seed_other_samples(backbone):
    a = [s.ids.tolist() for s in run(backbone, [7, 8], 4, seed=5, max_new_tokens=20)]
    b = [s.ids.tolist() for s in run(backbone, [7, 8], 4, seed=5, max_new_tokens=20)]
    c = [s.ids.tolist() for s in run(backbone, [7, 8], 4, seed=6, max_new_tokens=20)]
    assert a == b
    assert a != c
    assert len({tuple(x) for x in a}) > 1                     # rows of one batch differ too


def test_only_real_symbols_are_sampled_never_specials_or_padding_rows():
    model = build("toy")
    bonus = torch.zeros(model.vocab_size)
    bonus[:NUM_SPECIAL] = 50.0                               # specials and the padding rows 12..15 win the
    bonus[V:] = 50.0                                         # softmax by far if they were allowed
    model.lm_logits = lambda h, f=model.lm_logits: f(h) + bonus
    samples = run(model, [7], 16, max_new_tokens=30)
    ids = np.concatenate([s.ids for s in samples])
    assert ids.min() >= NUM_SPECIAL and ids.max() < V
    assert all(len(s.ids) == 30 and not s.stopped for s in samples)
    # EOS is one of them: allowed only with stop_at_eos, and then it ends every sample at once
    stopped = run(model, [7], 4, max_new_tokens=30, stop_at_eos=True)
    assert all(s.stopped and len(s.ids) == 0 for s in stopped)


def test_filter_logits_top_p_keeps_the_nucleus_only():
    allowed = gen.allowed_tokens(V, EOS, False)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = torch.full((1, 16), 3.0)                        # specials and padding rows: masked anyway
    logits[0, 7:12] = torch.log(probs)

    def kept(**kw) -> list[int]:
        out = gen.filter_logits(logits, allowed, **kw)
        assert out.shape == (1, V)
        return torch.isfinite(out[0]).nonzero().flatten().tolist()

    assert kept(top_p=0.75) == [7, 8]
    assert kept(top_p=0.9) == [7, 8, 9]
    assert kept(top_p=0.4) == [7]
    assert kept(top_k=3) == [7, 8, 9]
    assert kept(top_k=3, top_p=0.75) == [7, 8]
    assert kept() == [7, 8, 9, 10]                           # probability 0 is not a token that can be drawn
    # draws: only nucleus tokens, in the renormalised proportions 0.5 : 0.3
    g = torch.Generator().manual_seed(0)
    draws = gen.sample_next(logits.expand(20000, -1), allowed, SamplingOptions(1, top_p=0.75), g)
    assert set(draws.tolist()) == {7, 8}
    assert abs((draws == 7).float().mean().item() - 0.5 / 0.8) < 0.015


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0], ids=lambda t: f"T{t}")
def test_temperature_scales_the_logits(temperature):
    allowed = gen.allowed_tokens(V, EOS, False)
    logits = torch.full((20000, 16), -math.inf)
    logits[:, 7], logits[:, 8] = 1.0, 0.0
    g = torch.Generator().manual_seed(1)
    draws = gen.sample_next(logits, allowed, SamplingOptions(1, temperature=temperature), g)
    expected = 1 / (1 + math.exp(-1.0 / temperature))
    assert set(draws.tolist()) <= {7, 8}
    assert abs((draws == 7).float().mean().item() - expected) < 0.015


def test_stop_at_eos_ends_samples_and_is_never_part_of_them():
    model = build("toy")
    bonus = torch.zeros(model.vocab_size)
    bonus[EOS] = -1.5                                        # about 4% per step
    model.lm_logits = lambda h, f=model.lm_logits: f(h) + bonus
    samples = run(model, [7, 8], 48, max_new_tokens=40, stop_at_eos=True, batch_size=16)
    stopped = [s for s in samples if s.stopped]
    assert 0 < len(stopped) < 48
    assert len({len(s.ids) for s in stopped}) > 2
    for s in samples:
        assert EOS not in s.ids.tolist()
        assert len(s.ids) == 40 if not s.stopped else len(s.ids) < 40
    # the rows that stopped were dropped from the batch: the rest continue exactly as decoded alone
    again = run(model, [7, 8], 48, max_new_tokens=40, stop_at_eos=True, batch_size=16)
    assert [s.ids.tolist() for s in again] == [s.ids.tolist() for s in samples]
    never = run(model, [7, 8], 8, max_new_tokens=40, stop_at_eos=False)
    assert all(len(s.ids) == 40 and EOS not in s.ids.tolist() for s in never)


def test_state_size_does_not_grow_with_the_generated_length(backbone, monkeypatch):
    sizes: list[int] = []
    step = backbone.step

    def recording_step(ids, state):
        hidden, new = step(ids, state)
        sizes.append(gen.state_numel(new))
        return hidden, new

    monkeypatch.setattr(backbone, "step", recording_step)
    run(backbone, [7, 8, 9], 3, max_new_tokens=4)
    short = set(sizes)
    sizes.clear()
    run(backbone, [7, 8, 9], 3, max_new_tokens=96)
    assert len(sizes) == 95
    assert set(sizes) == short == {gen.state_numel(backbone.allocate_state(3))}


class TransposedToy(toy_recurrent.GatedRecurrence):
    """The toy backbone with its state stored [D, B]: the engine cannot see rows on dim 0 and must
    prefill every row and keep finished rows in the batch."""

    def allocate_state(self, batch_size, device=None):
        return [s.T.contiguous() for s in super().allocate_state(batch_size, device)]

    def forward(self, input_ids=None, state=None, **kw):
        if state is None:
            return super().forward(input_ids, **kw)
        hidden, new = super().forward(input_ids, state=[s.T for s in state], **kw)
        return hidden, [s.T.contiguous() for s in new]

    def step(self, input_ids, state):
        hidden, new = super().step(input_ids, [s.T for s in state])
        return hidden, [s.T.contiguous() for s in new]


def test_a_state_without_rows_on_dim0_gives_the_same_samples():
    plain = toy_backbone().eval()
    odd = TransposedToy(plain.config).eval()
    odd.load_state_dict(plain.state_dict())
    assert gen._rows_on_dim0(plain, "cpu") and not gen._rows_on_dim0(odd, "cpu")
    for stop in (False, True):
        kw = dict(max_new_tokens=25, stop_at_eos=stop, batch_size=5)
        a = run(plain, [7, 9], 12, seed=3, **kw)
        b = run(odd, [7, 9], 12, seed=3, **kw)
        assert [(s.ids.tolist(), s.stopped) for s in a] == [(s.ids.tolist(), s.stopped) for s in b]


@pytest.mark.parametrize("preset", ["hyenadna-tiny-1k", "caduceus-ph-tiny", "dna-xlstm-tiny-bidir"])
def test_models_that_cannot_generate_are_refused(preset):
    from bioseq.commands.generate import generative_families

    assert generative_families() == "mamba, xlstm"
    model = models.build_backbone(preset=preset)
    with pytest.raises(GenerateError, match="mamba, xlstm"):
        gen.check_generative(model, generative_families())
    with pytest.raises(GenerateError, match="recurrent state"):
        list(gen.generate(model, DNA, [[7]], 1, SamplingOptions(3)))


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-1),
                                 dict(top_p=0.0), dict(top_p=1.5), dict(batch_size=0)],
                         ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(GenerateError):
        SamplingOptions(**{"max_new_tokens": 5, **bad})


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate_models")
    torch.manual_seed(0)
    dna = models.build_backbone(preset="dna-xlstm-tiny", d_model=32, chunk_size=8)
    dna.save_pretrained(root / "dna", tokenizer=DNA)
    mamba = models.build_backbone(preset="mamba-tiny", d_model=32, n_layer=2)
    mamba.save_pretrained(root / "mamba")
    tok = SmilesTokenizer.build(SMILES + ["."])
    chem = models.build_backbone(preset="chem-xlstm-tiny", d_model=32, n_layer=1)
    chem.save_pretrained(root / "chem", tokenizer=tok)
    chem.save_pretrained(root / "chem_no_vocab")
    tok.save(root / "vocab.json")
    fasta = root / "prompts.fa"
    fasta.write_text(">p1 first\nACGTAC\n>p2\nGGGA\nTT\n")
    smi = root / "prompts.smi"
    smi.write_text("CC\nc1cc\n")
    return {"root": root, "dna": root / "dna", "mamba": root / "mamba", "chem": root / "chem",
            "chem_no_vocab": root / "chem_no_vocab", "vocab": root / "vocab.json", "fasta": fasta, "smi": smi}


def generate_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["generate", "-q", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_fasta_text(path: Path) -> list[tuple[str, str]]:
    records = []
    for block in path.read_text().split(">")[1:]:
        head, *lines = block.strip().split("\n")
        records.append((head, "".join(lines)))
    return records


def test_cli_dna_fasta_from_a_prompt_file(saved, tmp_path, capsys):
    out = tmp_path / "out.fa"
    code, _, err = generate_cli(capsys, "-m", saved["dna"], "--prompt-file", saved["fasta"], "-n", 3,
                                "--max-new-tokens", 76, "--top-k", 3, "--seed", 1, "-o", out)
    assert code == 0, err
    assert "warning" not in err                               # trained-or-not is unknown: weights from a dir
    records = read_fasta_text(out)
    assert [r[0] for r in records] == [f"{p}_sample_{i}" for p in ("p1", "p2") for i in (1, 2, 3)]
    for (name, seq) in records:
        prompt = "ACGTAC" if name.startswith("p1") else "GGGATT"
        assert seq.startswith(prompt) and len(seq) == len(prompt) + 76
        assert set(seq) <= set("ACGTN")
    assert max(len(line) for line in out.read_text().splitlines()) == 80      # wrapped FASTA
    again = tmp_path / "again.fa"
    generate_cli(capsys, "-m", saved["dna"], "--prompt-file", saved["fasta"], "-n", 3, "--max-new-tokens", 76,
                 "--top-k", 3, "--seed", 1, "-o", again)
    assert again.read_bytes() == out.read_bytes()
    cont = tmp_path / "cont.fa"
    generate_cli(capsys, "-m", saved["dna"], "--prompt-file", saved["fasta"], "-n", 3, "--max-new-tokens", 76,
                 "--top-k", 3, "--seed", 1, "--continuation-only", "-o", cont)
    assert [s for _, s in read_fasta_text(cont)] == [s[len("ACGTAC" if n.startswith("p1") else "GGGATT"):]
                                                      for n, s in records]


def test_cli_prompt_text_ids_and_mamba(saved, tmp_path, capsys):
    out = tmp_path / "out.fa"
    code, _, err = generate_cli(capsys, "-m", saved["mamba"], "--prompt", "acgt", "-n", 2,
                                "--max-new-tokens", 7, "--temperature", 0.7, "--top-p", 0.9, "-o", out)
    assert code == 0, err
    records = read_fasta_text(out)
    assert [r[0] for r in records] == ["sample_1", "sample_2"]
    assert all(s.startswith("ACGT") and len(s) == 11 for _, s in records)


def test_cli_prot_xlstm_uses_its_own_vocabulary(tmp_path, capsys):
    """A Prot-xLSTM (38-token vocabulary, <cls> 0) generates proteins: only residues and gaps come out."""
    out = tmp_path / "p.fa"
    code, _, err = generate_cli(capsys, "-m", "prot-xlstm-tiny", "--prompt", "MKV", "--add-cls", "-n", 3,
                                "--max-new-tokens", 12, "--no-stop-at-eos", "-o", out)
    assert code == 0, err
    records = read_fasta_text(out)
    assert len(records) == 3
    assert all(s.startswith("MKV") and len(s) == 15 and set(s) <= set("LAGVSERTIDPKQNFYMHWCXBUZO.-")
               for _, s in records)


def test_cli_smiles_one_per_line(saved, tmp_path, capsys):
    out = tmp_path / "mols.smi"
    code, _, err = generate_cli(capsys, "-m", saved["chem"], "-n", 7, "--max-new-tokens", 20, "-o", out)
    assert code == 0, err
    lines = out.read_text().split("\n")
    assert len(lines) == 8 and lines[-1] == ""                # 7 lines, empty samples included
    vocab = set(SmilesTokenizer.load(saved["vocab"]).vocab[NUM_SPECIAL:])
    for line in lines[:-1]:
        assert "[CLS]" not in line and "[SEP]" not in line
        assert set(SmilesTokenizer().tokenize(line)) <= vocab
    prompted = tmp_path / "prompted.smi"
    code, _, err = generate_cli(capsys, "-m", saved["chem"], "--prompt-file", saved["smi"], "-n", 2,
                                "--max-new-tokens", 5, "-o", prompted)
    assert code == 0, err
    got = prompted.read_text().splitlines()
    assert len(got) == 4 and got[0].startswith("CC") and got[2].startswith("c1cc")


def test_cli_warns_once_about_random_weights(saved, tmp_path, capsys):
    code, out, err = generate_cli(capsys, "-m", "xlstm-tiny", "-n", 2, "--max-new-tokens", 5, "-o", "-")
    assert code == 0
    assert out.count(">sample_") == 2
    warnings = [line for line in err.splitlines() if line.startswith("bioseq: warning:")]
    assert len(warnings) == 1 and "random" in warnings[0].lower()
    code, _, err = generate_cli(capsys, "-m", "chem-xlstm-tiny", "--tokenizer", saved["vocab"], "-n", 2,
                                "--max-new-tokens", 5, "-o", tmp_path / "x.smi")
    assert code == 0, err


def test_cli_reads_a_pretrain_checkpoint(saved, tmp_path, capsys):
    """A ``bioseq pretrain`` last.ckpt: plain-data hyper_parameters + ``backbone.``-prefixed weights."""
    model = models.load_backbone(saved["chem"])
    tok = SmilesTokenizer.load(saved["vocab"])
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 3, "hyper_parameters": {"backbone_config": model.config.to_dict(),
                                                        "tokenizer": tok.to_dict(), "objective": "clm"},
                "state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    from_dir, from_ckpt = tmp_path / "dir.smi", tmp_path / "ckpt.smi"
    for spec, out in ((saved["chem"], from_dir), (ckpt, from_ckpt)):
        code, _, err = generate_cli(capsys, "-m", spec, "-n", 5, "--max-new-tokens", 15, "-o", out)
        assert code == 0, err
        assert "warning" not in err
    assert from_ckpt.read_text() == from_dir.read_text()
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint\n")
    code, _, err = generate_cli(capsys, "-m", bad, "-n", 1, "--max-new-tokens", 3, "-o", tmp_path / "x.smi")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable PyTorch checkpoint" in err
    torch.save({"state_dict": {}}, bad)
    code, _, err = generate_cli(capsys, "-m", bad, "-n", 1, "--max-new-tokens", 3, "-o", tmp_path / "x.smi")
    assert code == 2 and "not a bioseq pretrain checkpoint" in err


@pytest.mark.parametrize("spec, words", [
    ("hyenadna-tiny-1k", "no recurrent state"),
    ("hyenadna-tiny-1k", "families that can generate: mamba, xlstm"),
    ("caduceus-ps-tiny", "not causal"),
    ("dna-xlstm-tiny-bidir", "not causal"),
    ("chem_no_vocab", "tokenizer.json"),
    ("chem-xlstm-tiny", "tokenizer.json"),
])
def test_cli_refusals_are_one_line_exit_2(saved, tmp_path, capsys, spec, words):
    spec = saved.get(spec, spec)
    out = tmp_path / "x.out"
    code, _, err = generate_cli(capsys, "-m", spec, "-n", 1, "--max-new-tokens", 3, "-o", out)
    assert code == 2
    lines = [line for line in err.splitlines() if not line.startswith("bioseq: warning:")]
    assert len(lines) == 1 and lines[0].startswith("bioseq generate: error:") and words in lines[0]
    assert not out.exists()


def test_cli_output_is_atomic(saved, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.fa"
    out.write_text("keep me\n")
    code, _, err = generate_cli(capsys, "-m", saved["dna"], "-n", 2, "--max-new-tokens", 5, "-o", out)
    assert code == 2 and "--overwrite" in err and out.read_text() == "keep me\n"
    calls = {"n": 0}
    sample_next = gen.sample_next

    def failing(*a, **kw):                                    # fails after the first batches were written
        calls["n"] += 1
        if calls["n"] > 12:
            raise GenerateError("simulated failure")
        return sample_next(*a, **kw)

    monkeypatch.setattr(gen, "sample_next", failing)
    fresh = tmp_path / "fresh.fa"
    code, _, err = generate_cli(capsys, "-m", saved["dna"], "-n", 6, "--batch-size", 2, "--max-new-tokens", 5,
                                "-o", fresh)
    assert code == 2 and "simulated failure" in err
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fa"]        # no temporary file left behind
    code, _, err = generate_cli(capsys, "-m", saved["dna"], "-n", 6, "--batch-size", 2, "--max-new-tokens", 5,
                                "--overwrite", "-o", out)
    assert code == 2 and out.read_text() == "keep me\n"
