"""Soft-prompt tuning (finetune/soft_prompt.py) and the label-token helpers (finetune/label_tokens.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioseq import models
from bioseq.errors import BioseqError
from bioseq.finetune import label_tokens as lt
from bioseq.finetune.soft_prompt import (
    SoftPromptConfig,
    SoftPromptModel,
    class_scores,
    train_soft_prompt,
)
from bioseq.tokenizers import DnaTokenizer

# One tiny causal backbone per family the contract has today, plus a bidirectional one ([MASK] answer).
TINY = {
    "hyena": dict(arch="hyena", d_model=16, n_layer=1, d_inner=32, l_max=40, filter_order=8),
    "mamba": dict(arch="mamba", d_model=16, n_layer=1, d_state=4),
    "xlstm": dict(arch="xlstm", d_model=16, n_layer=1, num_heads=2, vocab_size=12, max_length=64,
                  chunk_size=8),
    "caduceus-ph": dict(arch="caduceus", d_model=16, n_layer=1, d_state=4, rcps=False),
    "caduceus-ps": dict(arch="caduceus", d_model=8, n_layer=1, d_state=4, rcps=True),  # embeddings 2 x d
}
TOK = DnaTokenizer()
A, N = TOK.token_to_id("A"), TOK.token_to_id("N")


def tiny(case: str, seed: int = 0) -> models.Backbone:
    torch.manual_seed(seed)
    return models.build_backbone(config=TINY[case])


def toy_task(n: int, length: int = 12, seed: int = 0):
    """Class 1 sequences end in GGG, class 0 in TTT (learnable from the last positions)."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        body = "".join(rng.choice(list("ACGT"), length - 3))
        seqs.append(body + ("GGG" if i % 2 else "TTT"))
        labels.append(i % 2)
    return seqs, np.asarray(labels)


def test_default_label_tokens_follow_the_hyenadna_protocol():
    assert lt.default_label_tokens(2) == ("A", "N")
    assert lt.default_label_tokens(3) == ("A", "G", "N")
    assert lt.label_token_ids(TOK, ("A", "N")) == [7, 11]
    with pytest.raises(BioseqError, match="--label-tokens"):
        lt.default_label_tokens(4)
    with pytest.raises(BioseqError, match="2 given for 3 classes"):
        lt.parse_label_tokens("A,N", 3, "dna")
    with pytest.raises(BioseqError, match="own token"):
        lt.label_token_ids(TOK, ("A", "A"))
    with pytest.raises(BioseqError, match="special"):
        lt.label_token_ids(TOK, ("A", "[SEP]"))
    with pytest.raises(BioseqError, match="not in the dna vocabulary"):
        lt.label_token_ids(TOK, ("A", "Q"))


def test_label_restricted_argmax_ignores_other_tokens():
    # row 0: the overall argmax is C (id 8) but among the label tokens A (class 0) wins;
    # row 1: N (class 1) beats A although G scores higher than both.
    logits = torch.full((2, 16), -5.0)
    logits[0, 8], logits[0, A], logits[0, N] = 9.0, 1.0, 0.5
    logits[1, 9], logits[1, A], logits[1, N] = 9.0, -1.0, 2.0
    assert lt.restrict_logits(logits, [A, N]).tolist() == [[1.0, 0.5], [-1.0, 2.0]]
    assert lt.predict(logits, [A, N]).tolist() == [0, 1]
    assert logits.argmax(-1).tolist() == [8, 9]


@pytest.mark.parametrize("case", sorted(TINY))
def test_frozen_backbone_is_bit_identical_and_gets_no_gradient(case):
    backbone = tiny(case)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    seqs, labels = toy_task(16)
    cfg = SoftPromptConfig(n_prompt=4, batch_size=8, max_epochs=1, lr=1e-2)
    res = train_soft_prompt(backbone, TOK, [A, N], seqs, labels, seqs[:8], labels[:8], cfg)
    assert res.steps == 2
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    # a backward pass reaches the prompt and nothing else
    model = res.model
    model.train()
    enc = TOK.batch_encode(seqs[:4])
    model(enc["input_ids"], enc["attention_mask"]).sum().backward()
    assert model.prompt.grad is not None and model.prompt.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt"]
    assert all(p.grad is None for p in backbone.parameters())
    assert not backbone.training  # model.train() leaves the frozen backbone in eval mode


def test_prompt_init_and_answer_position():
    backbone = tiny("hyena").eval()
    g = torch.Generator().manual_seed(0)
    model = SoftPromptModel(backbone, [A, N], 3, generator=g)
    expect = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 0.02
    assert torch.equal(model.prompt.detach(), expect)
    # right padding: each row answers at its own last token (K + len - 1), equal to an unpadded run
    enc = TOK.batch_encode(["ACGTACGT", "ACG"])
    batched = model(enc["input_ids"], enc["attention_mask"])
    single = model(torch.as_tensor(TOK.encode("ACG"))[None])
    assert torch.allclose(batched[1], single[0], atol=1e-5)
    # the same numbers by hand: prompt + embeddings through inputs_embeds, LM head at the last position
    ids = torch.as_tensor(TOK.encode("ACG"))[None]
    x = torch.cat([model.prompt[None], backbone.embed_tokens(ids)], 1)
    by_hand = backbone.lm_logits(backbone(inputs_embeds=x)[:, -1])[:, [A, N]]
    assert torch.allclose(single, by_hand, atol=1e-6)


def test_bidirectional_backbone_answers_at_a_mask_token():
    backbone = tiny("caduceus-ph").eval()
    model = SoftPromptModel(backbone, [A, N], 2, mask_id=TOK.mask_id)
    ids = torch.as_tensor(TOK.encode("ACGTA"))[None]
    embeds, mask, answer = model.inputs(ids, torch.ones_like(ids, dtype=torch.bool))
    assert embeds.shape[1] == 2 + 5 + 1 and answer.tolist() == [7] and bool(mask.all())
    assert torch.equal(embeds[0, -1], backbone.embed_tokens(torch.tensor([[TOK.mask_id]]))[0, 0])


def test_prompt_plus_sequence_longer_than_max_length_is_refused():
    backbone = tiny("hyena")  # l_max 40
    seqs, labels = toy_task(4, length=30)
    with pytest.raises(BioseqError, match=r"16 soft-prompt tokens \+ 30 sequence tokens = 46 tokens, more "
                                          r"than the backbone's max_length 40 \(prompt and context tokens "
                                          r"count toward the maximum length\)"):
        train_soft_prompt(backbone, TOK, [A, N], seqs, labels, seqs, labels, SoftPromptConfig(n_prompt=16))
    # K = 10 fits exactly (10 + 30 = 40)
    res = train_soft_prompt(backbone, TOK, [A, N], seqs, labels, seqs, labels,
                            SoftPromptConfig(n_prompt=10, max_epochs=1, batch_size=4))
    assert res.steps == 1


def test_training_lowers_the_loss_and_restores_the_best_epoch():
    backbone = tiny("hyena", seed=1)
    seqs, labels = toy_task(32)
    cfg = SoftPromptConfig(n_prompt=4, batch_size=16, max_epochs=6, lr=5e-2, patience=6)
    res = train_soft_prompt(backbone, TOK, [A, N], seqs, labels, seqs, labels, cfg)
    losses = [h["val_loss"] for h in res.history]
    assert len(losses) == 6 and min(losses) < losses[0]
    best = int(np.argmin(losses))
    assert res.best_epoch == best
    scores = class_scores(res.model, TOK, seqs)
    got = float(torch.nn.functional.cross_entropy(torch.from_numpy(scores), torch.from_numpy(labels)))
    assert got == pytest.approx(losses[best], abs=1e-5)


def test_zero_prompt_tokens_is_the_frozen_models_own_answer():
    backbone = tiny("hyena").eval()
    seqs, labels = toy_task(4)
    res = train_soft_prompt(backbone, TOK, [A, N], seqs, labels, seqs, labels, SoftPromptConfig(n_prompt=0))
    assert res.steps == 0 and res.model.n_prompt == 0
    ids = torch.as_tensor(TOK.encode(seqs[0]))[None]
    expect = backbone.lm_logits(backbone(ids)[:, -1])[:, [A, N]]
    assert np.allclose(class_scores(res.model, TOK, seqs[:1]), expect.detach().numpy(), atol=1e-6)


def test_label_token_logprobs_flag_a_token_the_model_never_emits(monkeypatch):
    """The answer-position log-probabilities are the frozen model's own (softmax over the vocabulary);
    a label token pushed 20 nats down (like N after pretraining on sequences without N) is reported."""
    from bioseq.finetune.soft_prompt import label_token_logprobs

    backbone = tiny("hyena").eval()
    seqs, _ = toy_task(6)
    got = label_token_logprobs(backbone, TOK, [A, N], seqs, batch_size=4)
    ids = torch.as_tensor(np.stack([TOK.encode(s) for s in seqs]))
    with torch.no_grad():
        want = torch.log_softmax(backbone.lm_logits(backbone(ids)[:, -1]).double(), -1)[:, [A, N]].mean(0)
    assert np.allclose(got, want.numpy(), atol=1e-6)
    assert lt.unreachable_labels(["A", "N"], list(got)) is None

    lm_logits = backbone.lm_logits
    monkeypatch.setattr(backbone, "lm_logits", lambda h: lm_logits(h).index_add(
        -1, torch.tensor([N]), torch.full((*h.shape[:-1], 1), -20.0)))
    low = label_token_logprobs(backbone, TOK, [A, N], seqs)
    assert low[0] - low[1] > 19
    message = lt.unreachable_labels(["A", "N"], list(low))
    assert message.startswith("label token(s) 'N' (") and "--label-tokens" in message
