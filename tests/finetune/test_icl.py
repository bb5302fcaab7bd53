"""k-shot in-context learning (finetune/icl.py), context likelihood (finetune/context_likelihood.py) and the
``bioseq icl`` / ``bioseq soft-prompt`` commands end to end on tiny data."""

from __future__ import annotations

import csv
import gzip
import math

import numpy as np
import pytest
import torch

from bioseq import models
from bioseq.cli import main as cli
from bioseq.errors import BioseqError
from bioseq.finetune import context_likelihood as cl
from bioseq.finetune.icl import KShotFormat, KShotTask, instruction_tune, length_budget, sample_demos
from bioseq.tokenizers import DnaTokenizer, ProteinTokenizer

TOK = DnaTokenizer()
A, C, G, T, N = (TOK.token_to_id(x) for x in "ACGTN")  # 7 8 9 10 11
SEP, PAD, MASK, CLS = 1, 4, 3, 0
TINY = {
    "hyena": dict(arch="hyena", d_model=16, n_layer=1, d_inner=32, l_max=96, filter_order=8),
    "mamba": dict(arch="mamba", d_model=16, n_layer=1, d_state=4),
    "xlstm": dict(arch="xlstm", d_model=16, n_layer=1, num_heads=2, vocab_size=12, max_length=128,
                  chunk_size=8),
    "caduceus-ph": dict(arch="caduceus", d_model=16, n_layer=1, d_state=4, rcps=False),
}


def tiny(case: str, seed: int = 0, **overrides) -> models.Backbone:
    torch.manual_seed(seed)
    return models.build_backbone(config={**TINY[case], **overrides}).eval()


# --------------------------------------------------------------------------------------------------
# the k-shot layout, as ids
# --------------------------------------------------------------------------------------------------


def test_kshot_layout_causal_spelled_out():
    fmt = KShotFormat(task_length=4, label_ids=(A, N))
    demos = [(TOK.encode("AC"), 0), (TOK.encode("GTA"), 1)]
    ids, answer = fmt.encode(demos, TOK.encode("T"))
    assert ids.tolist() == [
        PAD, PAD, A, C, SEP, A, SEP,       # "AC"  (class 0 -> A), left-padded to 4
        PAD, G, T, A, SEP, N, SEP,         # "GTA" (class 1 -> N)
        PAD, PAD, PAD, T, SEP,             # the query, then [SEP]: the next token is the answer
    ]
    assert answer == 18 and ids[answer] == SEP and len(ids) == fmt.length(2)


def test_kshot_layout_bidirectional_and_repeated():
    fmt = KShotFormat(task_length=2, label_ids=(A, G, N), causal=False, repeat=2)
    ids, answer = fmt.encode([(TOK.encode("C"), 2)], TOK.encode("GT"))
    assert ids.tolist() == [PAD, C, SEP, N, SEP,   # demonstration block
                            PAD, C, SEP, N, SEP,   # shown twice
                            G, T, SEP, MASK, SEP]  # query [SEP] [MASK] [SEP]: answered at the [MASK]
    assert answer == 13 and ids[answer] == MASK and len(ids) == fmt.length(1)
    assert length_budget(500, 4, 2) == 8 * 503 + 501


def test_sequence_longer_than_the_task_length_is_an_error():
    with pytest.raises(BioseqError, match="5 tokens is longer than the task length 4"):
        KShotFormat(task_length=4, label_ids=(A, N)).pad(TOK.encode("ACGTA"))


def test_demonstrations_k_per_class_shuffled_with_a_seed():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    a = sample_demos(labels, 2, np.random.default_rng([0, 5]))
    b = sample_demos(labels, 2, np.random.default_rng([0, 5]))
    assert a.tolist() == b.tolist() and sorted(labels[a].tolist()) == [0, 0, 1, 1]
    orders = {tuple(labels[sample_demos(labels, 2, np.random.default_rng([s, 0]))]) for s in range(20)}
    assert len(orders) > 1  # classes are interleaved differently by different seeds
    assert 3 not in sample_demos(labels, 3, np.random.default_rng(0), exclude=3)
    with pytest.raises(BioseqError, match="class 0 has only 3"):
        sample_demos(labels, 4, np.random.default_rng(0))


def toy_pool(n: int = 12, length: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), length - i % 2)) for i in range(n)]
    return seqs, np.arange(n) % 2


@pytest.mark.parametrize("case", sorted(TINY))
def test_kshot_scores_are_the_label_logits_at_the_answer_position(case):
    backbone = tiny(case)
    seqs, labels = toy_pool()
    task = KShotTask(backbone, TOK, [A, N], seqs, labels, seed=3)
    queries = ["ACGTAC", "TTG"]
    got = task.scores(queries, shots=2, batch_size=1)
    for i, q in enumerate(queries):
        ids, answer = task.example(TOK.encode(q), 2, i)
        assert ids[answer] == (SEP if backbone.causal else MASK)
        demo_labels = ids[7:len(ids) - 7:9] if backbone.causal else None  # label slots of 4 demos (T=6)
        if demo_labels is not None:
            assert sorted(demo_labels.tolist()) == [A, A, N, N]
        logits = backbone.lm_logits(backbone(torch.as_tensor(ids)[None]))[0, answer]
        assert np.allclose(got[i], logits[[A, N]].detach().numpy(), atol=1e-5)
    # batched == one at a time (every example of one k has the same length)
    assert np.allclose(task.scores(queries, shots=2, batch_size=2), got, atol=1e-5)


def test_repeat_auto_doubles_demonstrations_for_recurrent_backbones():
    seqs, labels = toy_pool()
    assert KShotTask(tiny("mamba"), TOK, [A, N], seqs, labels, repeat="auto").format.repeat == 2
    assert KShotTask(tiny("hyena"), TOK, [A, N], seqs, labels, repeat="auto").format.repeat == 1


def test_kshot_longer_than_max_length_is_refused():
    backbone = tiny("hyena")  # l_max 96; task length 6: 2 shots x 2 classes -> 4 x 9 + 7 = 43 fits
    seqs, labels = toy_pool()
    task = KShotTask(backbone, TOK, [A, N], seqs, labels)
    task.check(2)
    with pytest.raises(BioseqError, match=r"k-shot layout with 5 shots per class: 10 demonstrations of "
                                          r"6 \+ 3 tokens .* = 97 tokens, more than the backbone's "
                                          r"max_length 96"):
        task.scores(["ACG"], shots=5)


def test_instruction_tuning_trains_a_copy():
    backbone = tiny("hyena")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    seqs, labels = toy_pool()
    task = KShotTask(backbone, TOK, [A, N], seqs, labels)
    tuned = instruction_tune(task, 1, 4, lr=1e-2, batch_size=2)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(before[k], v)]
    assert "embed_tokens.weight" in changed
    assert not np.allclose(task.scores(["ACGT"], 1, backbone=tuned), task.scores(["ACGT"], 1))
    with pytest.raises(BioseqError, match="pool has only 12"):
        instruction_tune(task, 1, 13)


# --------------------------------------------------------------------------------------------------
# context likelihood
# --------------------------------------------------------------------------------------------------


def protein_model(l_max: int) -> models.Backbone:
    torch.manual_seed(0)
    return models.build_backbone(config=dict(arch="hyena", d_model=16, n_layer=1, d_inner=32, l_max=l_max,
                                             filter_order=8, alphabet="protein",
                                             vocab_size=ProteinTokenizer().vocab_size)).eval()


def test_context_layout_and_target_nll_by_hand():
    ptok = ProteinTokenizer()
    ids, start = cl.context_layout(ptok, [ptok.encode("MK"), ptok.encode("W")], ptok.encode("MKV"))
    M, K, W, V = (ptok.token_to_id(x) for x in "MKWV")
    assert ids.tolist() == [CLS, M, K, SEP, W, SEP, M, K, V, SEP] and start == 6
    torch.manual_seed(0)
    backbone = protein_model(32)
    nll = cl.target_nll(backbone, ptok, [(ids, start, 3), (ids[:4], 1, 2)])
    with torch.no_grad():
        logits = backbone.lm_logits(backbone(torch.as_tensor(ids)[None]))[0, :, : ptok.vocab_size]
    logp = torch.log_softmax(logits, -1)
    expect = -(logp[5, M] + logp[6, K] + logp[7, V])
    assert nll[0] == pytest.approx(float(expect), rel=1e-5)
    assert nll[1] == pytest.approx(float(-(logp[0, M] + logp[1, K])), rel=1e-5)  # padded row, same values


A2M = """>query/1-8
MKV-LLAW
>h1/1-9
MKV-aLLAW
>h2
MRV-LLAW
>h3
MRVELMAF
>h4
-RV-LMA-
>h5
..MKV-LLAF
"""


def write_a2m(tmp_path, text=A2M):
    path = tmp_path / "fam.a2m.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path


def test_read_family_handles_inserts_gaps_and_identity(tmp_path):
    fam = cl.read_family(write_a2m(tmp_path))
    assert fam.ids == ["query/1-8", "h1/1-9", "h2", "h3", "h4", "h5"]
    assert fam.seqs[1] == "MKVALLAW" and fam.seqs[3] == "MRVELMAF" and fam.seqs[4] == "RVLMA"
    assert fam.seqs[5] == "MKVLLAF"
    assert cl.read_family(write_a2m(tmp_path), "drop").seqs[1] == "MKVLLAW"
    ident = fam.identity_to(0)  # over the query's 7 non-gap match columns
    assert ident.tolist() == pytest.approx([1, 1, 6 / 7, 4 / 7, 3 / 7, 6 / 7])
    with pytest.raises(BioseqError, match="record b .* 3 match columns, the first record 4"):
        cl.read_family(write_a2m(tmp_path, ">a\nMKVL\n>b\nMKV\n"))


def test_homology_context_is_nearest_training_homologs_least_similar_first(tmp_path, monkeypatch):
    fam = cl.read_family(write_a2m(tmp_path))
    ptok = ProteinTokenizer()
    seen = []
    import bioseq.datamodules.protein as protein

    monkeypatch.setattr(protein, "split_of", lambda rid, *a: "test" if rid == "query/1-8" else "train")
    real_layout = cl.context_layout
    monkeypatch.setattr(cl, "context_layout", lambda t, ctx, tgt: (seen.append([ptok.decode(c) for c in ctx]),
                                                                   real_layout(t, ctx, tgt))[1])
    torch.manual_seed(0)
    backbone = protein_model(64)
    rows = cl.homology_rows(backbone, ptok, fam, (0, 1, 3), n_targets=4, max_identity=0.95)
    # h1 (identity 1.0) is a near-copy and left out; then h2, h5 (6/7: file order breaks the tie), h3
    assert seen == [[], ["MRVLLAW"], ["MRVELMAF", "MKVLLAF", "MRVLLAW"]]
    assert [r["homologs"] for r in rows] == [0, 1, 3] and {r["target"] for r in rows} == {"query/1-8"}
    assert rows[1]["mean_identity"] == pytest.approx(6 / 7)
    assert all(r["tokens"] == 7 and math.isfinite(r["nll"]) for r in rows)
    with pytest.raises(BioseqError, match="5 homologs asked for, 4 training members below identity 0.95"):
        cl.homology_rows(backbone, ptok, fam, (5,), n_targets=1)
    small = protein_model(20)
    with pytest.raises(BioseqError, match=r"3 homologs \(26 tokens with their \[CLS\]/\[SEP\]\) \+ target "
                                          r"query/1-8 \(7 \+ 1 tokens\) = 34 tokens, more than the "
                                          r"backbone's max_length 20"):
        cl.homology_rows(small, ptok, fam, (3,), n_targets=1)


def test_perplexity_is_token_weighted():
    rows = [{"k": 0, "nll": 1.0, "tokens": 10}, {"k": 0, "nll": 2.0, "tokens": 30},
            {"k": 1, "nll": 0.5, "tokens": 5}]
    s = cl.perplexity_by(rows, "k")
    assert s[0]["nll"] == pytest.approx(1.75) and s[0]["perplexity"] == pytest.approx(math.exp(1.75))
    assert s[1]["targets"] == 1


# --------------------------------------------------------------------------------------------------
# the commands end to end
# --------------------------------------------------------------------------------------------------


def write_task(tmp_path, n_train=24, n_test=8, length=10):
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(tmp_path / f"{name}.tsv", "w") as fh:
            fh.write("sequence\tlabel\n")
            for i in range(n):
                body = "".join(rng.choice(list("ACGT"), length - 3))
                fh.write(f"{body}{'GGG' if i % 2 else 'TTT'}\t{i % 2}\n")
    return tmp_path / "train.tsv", tmp_path / "test.tsv"


@pytest.fixture
def tiny_ckpt(tmp_path):
    backbone = tiny("hyena", l_max=80)
    backbone.save_pretrained(tmp_path / "ckpt", tokenizer=TOK)
    return tmp_path / "ckpt"


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_cli_kshot_end_to_end(tmp_path, tiny_ckpt, capsys):
    train, test = write_task(tmp_path)
    with open(test, "a") as fh:  # one query longer than every training sequence sets the task length
        fh.write("ACGTACGTATTT\t0\n")
    out = tmp_path / "icl"
    assert cli(["icl", "kshot", "--train", str(train), "--test", str(test), "--backbone", str(tiny_ckpt),
                "--shots", "0", "1", "2", "--instruction-tune", "0", "4", "--no-progress",
                "--out", str(out)]) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["shots"], r["instruction_examples"]) for r in rows] == [
        ("0", "0"), ("1", "0"), ("2", "0"), ("0", "4"), ("1", "4"), ("2", "4")]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["n_test"] == "9" for r in rows)
    assert rows[2]["context_tokens"] == str(4 * 15 + 13)  # 4 demonstrations of 12 + 3, query 12 + 1
    assert (out / "results.png").stat().st_size > 1000
    assert "k-shot in-context learning" in (out / "results.md").read_text()
    # does not fit: a one-line error, exit 2
    assert cli(["icl", "kshot", "--train", str(train), "--test", str(test), "--backbone", str(tiny_ckpt),
                "--shots", "3", "--no-progress", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bioseq icl: error: k-shot layout with 3 shots per class")
    assert "max_length 80" in err


def test_cli_soft_prompt_end_to_end(tmp_path, tiny_ckpt, capsys):
    train, test = write_task(tmp_path)
    out = tmp_path / "sp"
    assert cli(["soft-prompt", "--train", str(train), "--test", str(test), "--backbone", str(tiny_ckpt),
                "--prompt-tokens", "0", "4", "--epochs", "2", "--batch-size", "8", "--no-progress",
                "--out", str(out)]) == 0
    rows = read_csv(out / "results.csv")
    assert [r["prompt_tokens"] for r in rows] == ["0", "4"] and rows[0]["steps"] == "0"
    assert int(rows[1]["steps"]) > 0 and rows[1]["n_test"] == "8" and rows[1]["label_tokens"] == "A,N"
    assert (out / "results.png").stat().st_size > 1000
    assert cli(["soft-prompt", "--train", str(train), "--test", str(test), "--backbone", str(tiny_ckpt),
                "--prompt-tokens", "71", "--no-progress", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("bioseq soft-prompt: error: 71 soft-prompt tokens + 10 sequence tokens = 81 tokens, more "
                   "than the backbone's max_length 80 (prompt and context tokens count toward the maximum "
                   "length)")


def test_cli_soft_prompt_warns_about_label_tokens_the_model_does_not_emit(tmp_path, tiny_ckpt, capsys,
                                                                         monkeypatch):
    from bioseq.finetune import soft_prompt

    train, test = write_task(tmp_path)
    monkeypatch.setattr(soft_prompt, "label_token_logprobs", lambda *a, **k: np.array([-1.2, -13.5]))
    assert cli(["soft-prompt", "--train", str(train), "--test", str(test), "--backbone", str(tiny_ckpt),
                "--prompt-tokens", "0", "--no-progress", "--out", str(tmp_path / "w")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "label token" in line]
    assert warning == ["bioseq soft-prompt: warning: label token(s) 'N' (-13.5) are more than 8 nats less "
                       "likely than 'A' (-1.2) at the answer position (mean log-probability): the model "
                       "hardly ever emits them (a token absent from its pretraining data?), and a prompt is "
                       "unlikely to make it answer them; name tokens it emits with --label-tokens (e.g. A,G "
                       "for DNA)"]


def test_cli_soft_prompt_marks_random_weights(tmp_path, capsys):
    train, test = write_task(tmp_path, n_train=12, n_test=4)
    assert cli(["soft-prompt", "--train", str(train), "--test", str(test), "--backbone", "mamba-tiny",
                "--prompt-tokens", "0", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    assert "random weights" in capsys.readouterr().err
    assert read_csv(tmp_path / "r" / "results.csv")[0]["backbone"] == "mamba-tiny (random weights)"


def test_cli_homology_and_smiles_end_to_end(tmp_path):
    ptok = ProteinTokenizer()
    torch.manual_seed(0)
    prot = protein_model(128)
    prot.save_pretrained(tmp_path / "prot", tokenizer=ptok)
    rows = [">r{}\n{}\n".format(i, "MKV-LLAW" if i % 3 else "MRV-aLMAF") for i in range(40)]
    a2m = write_a2m(tmp_path, "".join(rows))
    out = tmp_path / "hom"
    assert cli(["icl", "homology", "--alignment", str(a2m), "--backbone", str(tmp_path / "prot"),
                "--homologs", "0", "1", "4", "--targets", "3", "--test-fraction", "0.2", "--max-identity",
                "1.01", "--no-progress", "--out", str(out)]) == 0
    summary = read_csv(out / "results.csv")
    assert [r["homologs"] for r in summary] == ["0", "1", "4"]
    assert len(read_csv(out / "targets.csv")) == 3 * int(summary[0]["targets"])
    assert (out / "results.png").stat().st_size > 1000

    from bioseq.tokenizers import SmilesTokenizer

    mols = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl", "OCCO", "CNC", "C=C"]
    stok = SmilesTokenizer.build(mols)
    chem = models.build_backbone(config=dict(arch="hyena", d_model=16, n_layer=1, d_inner=32, l_max=128,
                                             filter_order=8, alphabet="smiles", vocab_size=stok.vocab_size))
    chem.save_pretrained(tmp_path / "chem", tokenizer=stok)
    (tmp_path / "m.smi").write_text("\n".join(mols) + "\n")
    out = tmp_path / "smi"
    assert cli(["icl", "smiles", "--smiles", str(tmp_path / "m.smi"), "--backbone", str(tmp_path / "chem"),
                "--context", "0", "2", "--targets", "4", "--no-progress", "--out", str(out)]) == 0
    summary = read_csv(out / "results.csv")
    assert [r["context"] for r in summary] == ["0", "2"] and summary[0]["targets"] == "4"
