"""Class labels as language-model tokens: what soft prompting and in-context evaluation predict.

Both protocols (``finetune.soft_prompt``, ``finetune.icl``) read a class off the LM head: the logits at
one position, restricted to one vocabulary token per class, and the class whose token scores highest.

* :func:`default_label_tokens` -- the HyenaDNA protocol's choice for DNA: nucleotide tokens, ``A``/``N``
  for two classes and ``A``/``G``/``N`` for three (class ``i`` -> token ``i``; sorted class names, so
  Genomic Benchmarks ``negative`` -> ``A``, ``positive`` -> ``N``). Other alphabets and class counts
  need the tokens named explicitly.
* :func:`label_token_ids` -- token strings -> vocabulary ids, checked (known, distinct, not special).
* :func:`restrict_logits` / :func:`predict` -- ``logits [..., V] -> [..., C]`` and its argmax.
* :func:`unreachable_labels` -- label tokens the frozen model (almost) never emits: a warning, since no
  prompt or demonstration will make it answer them.
* :func:`check_fits` -- the one length check (the backbone's ``max_length`` counts every token the model
  sees, soft-prompt tokens and demonstrations included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bioseq.errors import BioseqError

DNA_LABEL_TOKENS: dict[int, tuple[str, ...]] = {2: ("A", "N"), 3: ("A", "G", "N")}


def default_label_tokens(num_classes: int, alphabet: str = "dna") -> tuple[str, ...]:
    """The label tokens of the HyenaDNA protocol (DNA, 2 or 3 classes); an error naming the option
    otherwise."""
    if alphabet == "dna" and num_classes in DNA_LABEL_TOKENS:
        return DNA_LABEL_TOKENS[num_classes]
    raise BioseqError(f"no default label tokens for {num_classes} classes of a '{alphabet}' model "
                      "(defaults: DNA A,N for 2 classes, A,G,N for 3): name one token per class, e.g. "
                      "--label-tokens A,C,G,T")


def parse_label_tokens(text: str | Sequence[str] | None, num_classes: int, alphabet: str) -> tuple[str, ...]:
    """``"A,N"`` / ``["A", "N"]`` / None (the default) -> one token string per class, count checked."""
    if text is None or text == "":
        return default_label_tokens(num_classes, alphabet)
    tokens = tuple(t.strip() for t in (text.split(",") if isinstance(text, str) else text))
    if len(tokens) != num_classes:
        raise BioseqError(f"label tokens {','.join(tokens)}: {len(tokens)} given for {num_classes} classes "
                          "(one token per class, in the order of the class ids)")
    return tokens


def label_token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Vocabulary ids of ``tokens``; unknown, repeated or special tokens are an error."""
    ids = []
    for tok in tokens:
        try:
            ids.append(int(tokenizer.token_to_id(tok)))
        except KeyError:
            raise BioseqError(f"label token {tok!r} is not in the {tokenizer.name} vocabulary") from None
    if len(set(ids)) != len(ids):
        raise BioseqError(f"label tokens {','.join(tokens)}: each class needs its own token")
    special = set(tokenizer.special_ids)
    bad = [t for t, i in zip(tokens, ids) if i in special]
    if bad:
        raise BioseqError(f"label token {bad[0]!r} is a special token; use residue/atom tokens")
    return ids


def restrict_logits(logits: torch.Tensor, label_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``logits [..., V] -> [..., C]``: the columns of the label tokens, in class order."""
    index = torch.as_tensor(label_ids, dtype=torch.long, device=logits.device)
    return logits.index_select(-1, index)


def predict(logits: torch.Tensor, label_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Class ids ``[...]``: argmax over the label tokens only (other tokens never win)."""
    return restrict_logits(logits, label_ids).argmax(-1)


def check_fits(total: int, max_length: int | None, what: str) -> None:
    """Refuse an input of ``total`` tokens longer than the backbone's ``max_length`` (None = no limit).

    ``what`` spells out how ``total`` is made up (e.g. "32 soft-prompt tokens + 500 sequence tokens").
    """
    if max_length is not None and total > max_length:
        raise BioseqError(f"{what} = {total} tokens, more than the backbone's max_length {max_length} "
                          "(prompt and context tokens count toward the maximum length)")


# A label token this many nats less likely than the most likely label token, on average at the answer
# position, is out of reach: a soft prompt moved a tiny HyenaDNA's label log-odds by about 2 nats
# (benchmarks/RESULTS.md), and N (never in its pretraining data) sat 11 nats below A.
UNREACHABLE_NATS = 8.0


def unreachable_labels(tokens: Sequence[str], mean_logprobs: Sequence[float],
                       margin: float = UNREACHABLE_NATS) -> str | None:
    """A one-line warning when some label token's mean log-probability (``mean_logprobs [C]``, natural
    log, at the answer position of the frozen model) is more than ``margin`` nats below the best label
    token's; None when all are within reach."""
    best = max(range(len(tokens)), key=lambda c: mean_logprobs[c])
    far = [c for c in range(len(tokens)) if mean_logprobs[best] - mean_logprobs[c] > margin]
    if not far:
        return None
    names = ", ".join(f"{tokens[c]!r} ({mean_logprobs[c]:.1f})" for c in far)
    return (f"label token(s) {names} are more than {margin:g} nats less likely than {tokens[best]!r} "
            f"({mean_logprobs[best]:.1f}) at the answer position (mean log-probability): the model "
            f"hardly ever emits them (a token absent from its pretraining data?), and a prompt is unlikely "
            f"to make it answer them; name tokens it emits with --label-tokens (e.g. A,G for DNA)")
