"""Likelihood of a sequence given related sequences as context: protein homologs, molecules of one set.

The in-context setting of Prot-xLSTM / ProtMamba (and Bio-xLSTM's chemistry experiments): a causal LM
reads ``[CLS] c_1 [SEP] c_2 [SEP] ... c_k [SEP] target [SEP]`` -- the layout of the protein DataModule's
homolog-context mode (``datamodules/protein.py``) -- and the target's perplexity is measured as a
function of k. Only the target's own tokens (not the final ``[SEP]``) are scored: the mean negative
log-likelihood in nats per token over the real vocabulary (padding rows of the LM head excluded), and
``perplexity = exp(sum of NLL / number of target tokens)`` over all targets of one k.

Protein families (:func:`read_family`, :func:`homology_rows`): an A2M / aligned-FASTA file, one family.
Upper case letters and ``-`` are the match columns (aligned to the query, the first record); lower case
letters are insert states and ``.`` gaps in insert columns (A2M). Context sequences are the unaligned
proteins: gaps ``-``/``.`` removed and insert-state letters upper-cased (``insertions="keep"``, what the
in-context models are trained on) or removed (``"drop"``), exactly as ``datamodules.protein`` cleans
them. Similarity to a target = identity over the target's non-gap match columns. The targets are the
members of one split (``split_of``: the same seeded hash as the DataModule, so a model trained in
homolog-context mode with the same fractions never saw them); the context of a target is drawn from the
*training* members only: its ``k`` most similar ones (near-copies above ``max_identity`` left out),
ordered least to most similar so the closest homolog sits right before the target. Contexts are
nested (the 4 homologs of k = 4 contain the one of k = 1).

Molecules (:func:`smiles_rows`): ``k`` other molecules of the same set, a seeded random draw (nested
across k), ordered least to most similar by the Jaccard similarity of their token-bigram sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bioseq.errors import BioseqError
from bioseq.finetune.label_tokens import check_fits


def context_layout(tokenizer, contexts: Sequence[np.ndarray], target: np.ndarray) -> tuple[np.ndarray, int]:
    """``([CLS] c_1 [SEP] ... c_k [SEP] target [SEP], index of the target's first token)``."""
    sep = np.array([tokenizer.sep_id], dtype=np.int64)
    pieces = [np.array([tokenizer.cls_id], dtype=np.int64)]
    for c in contexts:
        pieces += [np.asarray(c, dtype=np.int64), sep]
    start = sum(len(p) for p in pieces)
    pieces += [np.asarray(target, dtype=np.int64), sep]
    return np.concatenate(pieces), start


def require_causal(backbone: nn.Module) -> None:
    if not getattr(backbone, "causal", True):
        raise BioseqError("context likelihood needs a causal backbone (next-token probabilities); this "
                          "backbone is bidirectional")


@torch.no_grad()
def target_nll(backbone: nn.Module, tokenizer, rows: Sequence[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """Summed NLL (nats) of each row's target tokens: ``rows`` are ``(ids, target start, target length)``.

    Rows are right-padded into one batch (causal: padding after a token never changes it).
    """
    device = next(backbone.parameters()).device
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    for i, (r, _, _) in enumerate(rows):
        ids[i, : len(r)] = torch.from_numpy(r)
    ids = ids.to(device)
    logits = backbone.lm_logits(backbone(ids))[..., : tokenizer.vocab_size].float()
    logp = F.log_softmax(logits[:, :-1], -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    out = []
    for i, (_, start, n) in enumerate(rows):
        out.append(float(nll[i, start - 1 : start - 1 + n].sum()))
    return np.asarray(out)


# --------------------------------------------------------------------------------------------------
# Protein families
# --------------------------------------------------------------------------------------------------


@dataclass
class Family:
    """One aligned family: record ids, match-column strings ``[R]`` of equal width, unaligned sequences."""

    ids: list[str]
    match: np.ndarray       # uint8 [R, C]: the match columns (upper case + '-') of every row
    seqs: list[str]
    path: str = ""

    def identity_to(self, row: int) -> np.ndarray:
        """Identity of every row to row ``row`` over ``row``'s non-gap match columns, ``[R]``."""
        t = self.match[row]
        cols = t != ord("-")
        if not cols.any():
            return np.zeros(len(self.ids))
        return (self.match[:, cols] == t[cols]).sum(1) / cols.sum()


def read_family(path, insertions: str = "keep") -> Family:
    """An A2M / aligned FASTA family (see the module docstring); rows of unequal match width are an error."""
    from bioseq.datamodules.protein import clean_aligned
    from bioseq.fasta import read_fasta

    ids, match, seqs = [], [], []
    width = None
    drop_inserts = str.maketrans("", "", ".abcdefghijklmnopqrstuvwxyz")
    for rec in read_fasta(path, allow_duplicates=True):
        m = rec.seq.translate(drop_inserts)
        if width is None:
            width = len(m)
        elif len(m) != width:
            raise BioseqError(f"{path}: record {rec.id} (line {rec.line}) has {len(m)} match columns, the "
                              f"first record {width} (not an aligned A2M / FASTA file)")
        seq = clean_aligned(rec.seq, insertions)
        if not seq:
            continue
        ids.append(rec.id)
        match.append(np.frombuffer(m.upper().encode("ascii"), dtype=np.uint8))
        seqs.append(seq)
    if len(ids) < 2:
        raise BioseqError(f"{path}: a family needs at least 2 sequences, found {len(ids)}")
    return Family(ids, np.stack(match), seqs, str(path))


def homology_rows(backbone: nn.Module, tokenizer, family: Family, counts: Sequence[int] = (0, 1, 4, 16, 64),
                  *, n_targets: int = 8, target_split: str = "test", val_fraction: float = 0.05,
                  test_fraction: float = 0.05, split_seed: int = 0, max_identity: float = 0.95,
                  seed: int = 0, progress=None) -> list[dict]:
    """One row per (target, k): NLL of a held-out target given its k closest training homologs.

    Targets: up to ``n_targets`` members of ``target_split`` (a seeded draw). Returns rows with
    ``target``, ``homologs`` (k), ``nll`` (nats per token), ``tokens``, ``context_tokens`` and
    ``mean_identity`` (of the context to the target).
    """
    from bioseq.datamodules.protein import split_of

    require_causal(backbone)
    splits = np.asarray([split_of(i, val_fraction, test_fraction, split_seed) for i in family.ids])
    pool = np.flatnonzero(splits == "train")
    candidates = np.flatnonzero(splits == target_split)
    if not len(candidates):
        raise BioseqError(f"{family.path}: no {target_split} members (val_fraction={val_fraction}, "
                          f"test_fraction={test_fraction}, split_seed={split_seed})")
    targets = np.sort(np.random.default_rng([seed, 0x70]).permutation(candidates)[:n_targets])
    if len(pool) < max(counts):
        raise BioseqError(f"{family.path}: {max(counts)} homologs asked for, the training split has "
                          f"{len(pool)} members")
    encode = lambda r: tokenizer.encode(family.seqs[r], path=family.path, record=family.ids[r])  # noqa: E731
    max_length = getattr(backbone, "max_length", None)
    rows = []
    for t in targets:
        ident = family.identity_to(t)
        ok = pool[(ident[pool] < max_identity) & (pool != t)]
        ranked = ok[np.lexsort((ok, -ident[ok]))]  # most similar first (ties: file order)
        target_ids = encode(t)
        batch, meta = [], []
        for k in counts:
            if k > len(ranked):
                raise BioseqError(f"{family.path}: target {family.ids[t]}: {k} homologs asked for, "
                                  f"{len(ranked)} training members below identity {max_identity}")
            context = ranked[:k][::-1]  # least to most similar, the closest right before the target
            ids, start = context_layout(tokenizer, [encode(c) for c in context], target_ids)
            check_fits(len(ids), max_length, f"{k} homologs ({len(ids) - len(target_ids) - 1} tokens with "
                                             f"their [CLS]/[SEP]) + target {family.ids[t]} "
                                             f"({len(target_ids)} + 1 tokens)")
            batch.append((ids, start, len(target_ids)))
            meta.append((k, len(ids) - len(target_ids) - 1, float(ident[context].mean()) if k else math.nan))
        for (_, _, n), (k, ctx, mean_id), s in zip(batch, meta, _chunked_nll(backbone, tokenizer, batch)):
            rows.append({"target": family.ids[t], "homologs": k, "nll": s / n, "tokens": n,
                         "context_tokens": ctx, "mean_identity": mean_id})
        if progress is not None:
            progress.update(1)
    return rows


def _chunked_nll(backbone, tokenizer, batch, chunk: int = 4) -> list[float]:
    """``target_nll`` over a list of rows, a few at a time (long contexts do not share one huge batch)."""
    out: list[float] = []
    order = sorted(range(len(batch)), key=lambda i: len(batch[i][0]))
    for s in range(0, len(order), chunk):
        part = [batch[i] for i in order[s : s + chunk]]
        out += list(zip(order[s : s + chunk], target_nll(backbone, tokenizer, part)))
    return [v for _, v in sorted(out)]


# --------------------------------------------------------------------------------------------------
# Molecules
# --------------------------------------------------------------------------------------------------


def _bigrams(tokens: Sequence[str]) -> set:
    return set(zip(tokens, tokens[1:])) | set(tokens)


def smiles_rows(backbone: nn.Module, tokenizer, smiles: Sequence[str], counts: Sequence[int] = (0, 1, 4, 16),
                *, n_targets: int = 32, seed: int = 0, progress=None) -> list[dict]:
    """One row per (target molecule, k): NLL of the target's tokens given k other molecules of the set.

    Targets: ``n_targets`` molecules (a seeded draw); contexts: a seeded random draw of other molecules,
    nested across k, ordered least to most similar to the target (token-bigram Jaccard).
    """
    require_causal(backbone)
    if len(smiles) < max(counts) + 1:
        raise BioseqError(f"{max(counts)} context molecules asked for, the set has {len(smiles)}")
    rng = np.random.default_rng([seed, 0x5A])
    targets = np.sort(rng.permutation(len(smiles))[:n_targets])
    max_length = getattr(backbone, "max_length", None)
    rows = []
    for t in targets:
        draw = np.random.default_rng([seed, int(t)]).permutation(len(smiles))
        draw = draw[draw != t][: max(counts)]
        grams_t = _bigrams(tokenizer.tokenize(smiles[t]))
        target_ids = tokenizer.encode(smiles[t], record=int(t))
        batch, meta = [], []
        for k in counts:
            chosen = draw[:k]
            sims = [len(grams_t & g) / max(1, len(grams_t | g))
                    for g in (_bigrams(tokenizer.tokenize(smiles[c])) for c in chosen)]
            context = [chosen[i] for i in np.argsort(sims, kind="stable")]
            context_ids = [tokenizer.encode(smiles[c], record=int(c)) for c in context]
            ids, start = context_layout(tokenizer, context_ids, target_ids)
            check_fits(len(ids), max_length, f"{k} context molecules + the target ({len(target_ids)} + 1 "
                                             "tokens)")
            batch.append((ids, start, len(target_ids)))
            meta.append((k, len(ids) - len(target_ids) - 1, float(np.mean(sims)) if k else math.nan))
        for (_, _, n), (k, ctx, sim), s in zip(batch, meta, _chunked_nll(backbone, tokenizer, batch)):
            rows.append({"target": smiles[t], "context": k, "nll": s / n, "tokens": n, "context_tokens": ctx,
                         "mean_similarity": sim})
        if progress is not None:
            progress.update(1)
    return rows


def perplexity_by(rows: Sequence[dict], key: str) -> dict[int, dict]:
    """``k -> {"perplexity", "nll" (token-weighted mean), "targets", "tokens"}`` over rows of one curve."""
    out: dict[int, dict] = {}
    for r in rows:
        s = out.setdefault(int(r[key]), {"nll_sum": 0.0, "tokens": 0, "targets": 0})
        s["nll_sum"] += r["nll"] * r["tokens"]
        s["tokens"] += r["tokens"]
        s["targets"] += 1
    for s in out.values():
        s["nll"] = s.pop("nll_sum") / max(1, s["tokens"])
        s["perplexity"] = math.exp(s["nll"])
    return dict(sorted(out.items()))
