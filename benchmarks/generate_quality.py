"""What ``bioseq generate`` samples from tiny xLSTMs trained for a few CPU minutes, against the same
models untrained.

1. **Chem-xLSTM** (``configs/pretrain/chem-xlstm-tiny-smiles.yaml``: preset ``chem-xlstm-tiny``, causal LM
   on the ~7k MoleculeNet SMILES of ../shared/data/smiles) trained for ``--minutes`` on one thread, then
   ``bioseq generate -m <run>/checkpoints/last.ckpt -n 1000`` (from ``[CLS]``, stop at ``[SEP]``,
   temperature 1). Reported: the fraction of samples that parse (RDKit when it imports, else the grammar
   check below), the fraction of the valid ones that are unique, and the fraction of the unique valid ones
   not in the training split (compared as RDKit canonical SMILES when RDKit is there, else as strings).
   The same for the untrained preset with the same vocabulary.
2. **DNA-xLSTM** (``configs/pretrain/dna-xlstm-tiny-ecoli.yaml``: preset ``dna-xlstm-tiny``, causal, on the
   E. coli K-12 genome, last 10% held out) trained for ``--minutes``, then ``bioseq generate`` continues one
   32-base prompt from the held-out part (``--dna-samples`` x ``--dna-tokens`` new bases, temperature 1).
   Reported: the L1 distance between the 3-mer spectrum (frequencies of the 64 ACGT 3-mers, counted within
   each sample, 3-mers with N left out) of the samples and that of the training 90% of the genome; beside
   the untrained model and, as the sampling-noise floor, held-out genome slices of the same total length.

The grammar check (without RDKit): every token is in the vocabulary and not special, brackets hold one
bracket atom, parentheses balance and never open at the start or close empty, every ring-closure label
that opens also closes, at least one atom, no bond, branch or dot at the end. Valences are not checked.

    python -m benchmarks.generate_quality                 # trains both (5 + 5 minutes), then samples
    python -m benchmarks.generate_quality --reuse         # reuse the runs under --work if they exist

Run from the repository root (the configs name ../shared/data relative to it).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ECOLI = SHARED / "genome" / "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"
SMILES_FILES = [SHARED / "smiles" / n for n in ("BBBP.csv.gz", "Lipophilicity.csv.gz",
                                                  "delaney-processed.csv.gz")]
BIOSEQ = [sys.executable, "-m", "bioseq.cli"]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def train(config: str, root: Path, minutes: float, reuse: bool) -> Path:
    """``bioseq pretrain fit --config <config>`` for ``minutes`` on one thread; returns last.ckpt."""
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"))
    if reuse and found:
        return found[-1]
    seconds = int(minutes * 60)
    cmd = BIOSEQ + ["pretrain", "fit", "--config", config, "--trainer.default_root_dir", str(root),
                    "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
                    "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"# training: {' '.join(cmd[2:])}", file=sys.stderr)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return sorted(root.glob("version_*/checkpoints/last.ckpt"))[-1]


def checkpoint_info(ckpt: Path) -> tuple[int, float | None]:
    """(optimizer steps, last val/loss) of a training run's checkpoint."""
    import csv

    step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", -1))
    metrics = ckpt.parents[1] / "metrics.csv"
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/loss")] if metrics.is_file() else []
    return step, float(rows[-1]["val/loss"]) if rows else None


def untrained(preset: str, tokenizer, out: Path, seed: int = 0) -> None:
    from bioseq import models

    torch.manual_seed(seed)
    models.build_backbone(preset=preset).save_pretrained(out, tokenizer=tokenizer)


def run_generate(model: Path, out: Path, *args) -> float:
    """``bioseq generate`` (the command itself); returns the wall seconds."""
    cmd = BIOSEQ + ["generate", "-m", str(model), "-o", str(out), "--overwrite", "-q", *map(str, args)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# SMILES
# --------------------------------------------------------------------------------------------------


def grammar_valid(smiles: str, tokenizer) -> bool:
    """The tokenizer-level check of the module docstring (no chemistry: valences are not checked)."""
    from bioseq.tokenizers import NUM_SPECIAL, smiles_tokens

    if not smiles:
        return False
    vocab = set(tokenizer.vocab[NUM_SPECIAL:])
    tokens = smiles_tokens(smiles)
    depth, open_rings, atoms, prev = 0, set(), 0, None
    for tok in tokens:
        if tok not in vocab:
            return False
        if tok == "(":
            if prev is None or prev in "(.":
                return False
            depth += 1
        elif tok == ")":
            if depth == 0 or prev == "(":
                return False
            depth -= 1
        elif tok[0] == "%" or tok.isdigit():
            if atoms == 0:
                return False
            open_rings ^= {tok}
        elif tok[0] == "[" or tok[0].isalpha() or tok == "*":
            atoms += 1
        elif tok == "." and (prev is None or prev == "."):
            return False
        prev = tok
    return depth == 0 and not open_rings and atoms > 0 and prev not in tuple("-=#$:/\\.(")


def smiles_metrics(samples: list[str], train: set[str], tokenizer, rdkit) -> dict:
    n = len(samples)
    if rdkit is not None:
        canon = []
        for s in samples:
            mol = rdkit.MolFromSmiles(s) if s else None
            canon.append(rdkit.MolToSmiles(mol) if mol is not None else None)
        valid = [c for c in canon if c is not None]
    else:
        valid = [s for s in samples if grammar_valid(s, tokenizer)]
    unique = set(valid)
    novel = unique - train
    grammar = sum(grammar_valid(s, tokenizer) for s in samples)
    return {"n": n, "valid": len(valid) / n, "grammar": grammar / n,
            "unique": len(unique) / max(len(valid), 1), "novel": len(novel) / max(len(unique), 1),
            "mean_len": float(np.mean([len(s) for s in samples])), "n_valid": len(valid),
            "n_unique": len(unique), "n_novel": len(novel)}


def smiles_splits(vocab_path: Path) -> dict[str, list[str]]:
    """The splits exactly as the SMILES DataModule of the config makes them."""
    from bioseq.datamodules.smiles import SmilesDataModule

    dm = SmilesDataModule([str(p) for p in SMILES_FILES], column="smiles", max_length=128,
                          val_fraction=0.05, vocab_path=str(vocab_path))
    dm.setup()
    return dm.splits


def training_smiles(vocab_path: Path) -> list[str]:
    return smiles_splits(vocab_path)["train"]


def validation_smiles(vocab_path: Path) -> list[str]:
    return smiles_splits(vocab_path)["val"]


@torch.no_grad()
def mean_nll(backbone, tokenizer, smiles: list[str]) -> float:
    """Mean next-token negative log-likelihood (nats) of ``[CLS] s [SEP]`` under one full forward per
    molecule, over the symbols and [SEP] (the tokens the sampler may draw)."""
    from bioseq.tokenizers import NUM_SPECIAL

    backbone.eval()
    total, count = 0.0, 0
    for s in smiles:
        ids = torch.as_tensor(tokenizer.encode(s, add_cls=True, add_eos=True))[None]
        logits = backbone.lm_logits(backbone(ids))[0, :-1, :tokenizer.vocab_size].float()
        drop = torch.arange(tokenizer.vocab_size) < NUM_SPECIAL
        drop[tokenizer.eos_id] = False
        logits = logits.masked_fill(drop, -torch.inf)
        logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])
        total, count = total - float(logp.sum()), count + ids.shape[1] - 1
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------------
# DNA
# --------------------------------------------------------------------------------------------------

_CODES = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(b"ACGT"):
    _CODES[_c] = _i


def kmer_counts(seq: str | bytes, k: int = 3) -> np.ndarray:
    """Counts of the 4^k ACGT k-mers of one sequence (k-mers holding any other letter left out)."""
    codes = _CODES[np.frombuffer(seq.encode() if isinstance(seq, str) else seq, dtype=np.uint8)]
    if len(codes) < k:
        return np.zeros(4 ** k)
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    ok = (windows >= 0).all(1)
    index = (windows[ok] * (4 ** np.arange(k - 1, -1, -1))).sum(1)
    return np.bincount(index, minlength=4 ** k).astype(np.float64)


def spectrum(seqs) -> np.ndarray:
    total = sum(kmer_counts(s) for s in seqs)
    return total / total.sum()


def read_fasta_seqs(path: Path) -> list[str]:
    text = path.read_text()
    return ["".join(b.split("\n")[1:]) for b in text.split(">")[1:]]


def read_genome() -> bytes:
    with gzip.open(ECOLI, "rt") as fh:
        return "".join(line.strip() for line in fh if not line.startswith(">")).upper().encode()


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "generate_quality"), help="runs and samples")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-clock minutes per model")
    p.add_argument("--reuse", action="store_true", help="reuse trained runs found under --work")
    p.add_argument("--n-smiles", type=int, default=1000)
    p.add_argument("--dna-samples", type=int, default=16)
    p.add_argument("--dna-tokens", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low-temperature", type=float, default=0.7, help="an extra row for the trained model")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")
        rdkit, checker = Chem, "RDKit"
    except ImportError:
        rdkit, checker = None, "grammar check (RDKit not installed)"

    from bioseq.tokenizers import DnaTokenizer, load_tokenizer

    # ---- Chem-xLSTM
    chem_ckpt = train("chem-xlstm-tiny-smiles", work / "chem", args.minutes, args.reuse)
    chem_step, chem_val = checkpoint_info(chem_ckpt)
    smiles_tok = load_tokenizer(work / "chem" / "smiles_vocab.json")
    untrained("chem-xlstm-tiny", smiles_tok, work / "chem_untrained", args.seed)
    train_set = training_smiles(work / "chem" / "smiles_vocab.json")
    train_canon = set(train_set)
    if rdkit is not None:
        train_canon = {rdkit.MolToSmiles(m) for m in map(rdkit.MolFromSmiles, train_set) if m is not None}
    chem_rows = {}
    low = args.low_temperature
    runs = (("trained", chem_ckpt, 1.0), (f"trained, T {low:g}", chem_ckpt, low),
            ("untrained", work / "chem_untrained", 1.0))
    for name, model, temperature in runs:
        out = work / f"chem_{name.replace(', ', '_').replace(' ', '')}.smi"
        secs = run_generate(model, out, "-n", args.n_smiles, "--max-new-tokens", 128, "--seed", args.seed,
                            "--temperature", temperature)
        samples = out.read_text().split("\n")[:-1]
        chem_rows[name] = {**smiles_metrics(samples, train_canon, smiles_tok, rdkit), "seconds": secs}
        if name == "trained":   # the sampler draws from the distribution the full forward defines
            from bioseq.commands.generate import load_pretrain_checkpoint

            lm, _ = load_pretrain_checkpoint(chem_ckpt)
            finished = [x for x in samples[:300] if 0 < len(smiles_tok.tokenize(x)) < 127]
            sample_nll = mean_nll(lm, smiles_tok, finished)
            val_nll = mean_nll(lm, smiles_tok, validation_smiles(work / "chem" / "smiles_vocab.json")[:300])

    # ---- DNA-xLSTM
    dna_ckpt = train("dna-xlstm-tiny-ecoli", work / "dna", args.minutes, args.reuse)
    dna_step, dna_val = checkpoint_info(dna_ckpt)
    untrained("dna-xlstm-tiny", DnaTokenizer(), work / "dna_untrained", args.seed)
    genome = read_genome()
    cut = int(len(genome) * 0.9)
    reference = spectrum([genome[:cut]])
    prompt = genome[cut + 10_000: cut + 10_032].decode()
    dna_rows = {}
    for name, model in (("trained", dna_ckpt), ("untrained", work / "dna_untrained")):
        out = work / f"dna_{name}.fa"
        secs = run_generate(model, out, "--prompt", prompt, "-n", args.dna_samples,
                            "--max-new-tokens", args.dna_tokens, "--continuation-only", "--seed", args.seed)
        seqs = read_fasta_seqs(out)
        dna_rows[name] = {"l1": float(np.abs(spectrum(seqs) - reference).sum()), "seconds": secs,
                          "n_frac": sum(s.count("N") for s in seqs) / sum(map(len, seqs)),
                          "gc": sum(s.count("G") + s.count("C") for s in seqs) / sum(map(len, seqs))}
    held = genome[cut:]
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(held) - args.dna_tokens, args.dna_samples)
    floor = [held[s: s + args.dna_tokens] for s in starts]
    floor_l1 = float(np.abs(spectrum(floor) - reference).sum())
    floor_gc = sum(s.count(b"G") + s.count(b"C") for s in floor) / (args.dna_samples * args.dna_tokens)

    # ---- table
    print(f"## bioseq generate: samples of tiny xLSTMs after {args.minutes:g} CPU minutes of training "
          f"(one thread) vs untrained\n")
    print(f"Chem-xLSTM (chem-xlstm-tiny, {chem_step} steps, val loss {chem_val:.3f}); {args.n_smiles} SMILES "
          f"from [CLS], temperature 1, stop at [SEP], max 128 tokens; validity by {checker}; "
          f"training split {len(train_set)} molecules.\n")
    print("| model | valid | valid (grammar check) | unique (of valid) | novel (of unique valid) "
          "| mean length | generate s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in chem_rows.items():
        print(f"| {name} | {r['valid']:.3f} ({r['n_valid']}) | {r['grammar']:.3f} | {r['unique']:.3f} "
              f"({r['n_unique']}) | {r['novel']:.3f} ({r['n_novel']}) | {r['mean_len']:.1f} | "
              f"{r['seconds']:.1f} |")
    print(f"\nSampler check: mean NLL per token under one full forward of 300 finished samples of the "
          f"trained model {sample_nll:.3f} nats, of 300 validation molecules {val_nll:.3f} (samples drawn "
          "step by step at T 1 score like the model's own entropy, not like text it did not generate).")
    print(f"\nDNA-xLSTM (dna-xlstm-tiny, {dna_step} steps, val loss {dna_val:.3f}); {args.dna_samples} x "
          f"{args.dna_tokens} bases continuing a 32-base held-out prompt, temperature 1; 3-mer spectrum L1 "
          "distance to the training 90% of the genome (0 = identical, 2 = disjoint).\n")
    print("| sequences | 3-mer L1 | GC | N fraction | generate s |")
    print("|---|---|---|---|---|")
    for name, r in dna_rows.items():
        print(f"| {name} model | {r['l1']:.4f} | {r['gc']:.3f} | {r['n_frac']:.3f} | {r['seconds']:.1f} |")
    print(f"| held-out genome, same amount (noise floor) | {floor_l1:.4f} | {floor_gc:.3f} | 0.000 | - |")
    genome_gc = (genome[:cut].count(b"G") + genome[:cut].count(b"C")) / cut
    print(f"\n(training genome GC {genome_gc:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
