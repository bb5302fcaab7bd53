"""Tokenizer throughput on one CPU core: bioseq vs a per-character Python dict baseline.

    python benchmarks/tokenizer_speed.py                 # 64 MB of random ACGTN text
    python benchmarks/tokenizer_speed.py --mb 100 --baseline-mb 8

Prints a table in MB/s of input text (1 MB = 1e6 characters) and checks the DNA-encode goals
(>= 200 MB/s and >= 50x the baseline measured in the same run) with PASS/FAIL lines; the exit
status is 1 when a goal fails. Rows:

* ``dna encode, 1 Mb windows``: the text encoded as consecutive 1 Mb windows (str -> int64), each
  result dropped before the next, the way the genome datamodule and ``embed`` call ``encode``. This
  is the row the goals apply to.
* ``dna encode, one call``: the whole text in one call; the int64 output is 8x the input and freshly
  allocated, so page faults and memory bandwidth bound it (reported, goals shown for information).
* ``dna decode``: int64 ids -> str, same windows.
* ``protein encode``: random 25-letter protein text, 400-residue records (one call each), the same
  records through ``batch_encode`` 64 at a time (padded LongTensor + mask), and 1 Mb windows.

The baseline is ``np.array([table[c] for c in seq], dtype=np.int64)`` (case folding and IUPAC
codes in the dict, so it accepts the same input), run on a smaller slice; its MB/s is what it is
per character regardless of slice length. Timings take the best of ``--repeats`` runs, measured in
process CPU time by default (``--clock wall`` for elapsed time): on a shared machine wall time mostly
measures the other users; CPU time still varies with their memory traffic.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from bioseq.alphabets import DNA_IUPAC, PROTEIN_STANDARD
from bioseq.tokenizers import DnaTokenizer, ProteinTokenizer

PROTEIN_EXTRA = "XBZUO"  # the non-standard protein letters that have tokens

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time

GOAL_MBS = 200.0
GOAL_RATIO = 50.0




def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return max(best, 1e-9)


def random_text(alphabet: str, n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    return letters[rng.integers(0, len(letters), n)].tobytes().decode("ascii")


def dict_baseline(table: dict[str, int]) -> Callable[[str], np.ndarray]:
    def encode(seq: str) -> np.ndarray:
        return np.array([table[c] for c in seq], dtype=np.int64)

    return encode


def windows(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def each(fn: Callable[[object], object], items: list) -> Callable[[], None]:
    """Call ``fn`` on every item, dropping each result (a streaming consumer, as a datamodule is)."""
    def run() -> None:
        for item in items:
            fn(item)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=64.0, help="DNA text size in MB (1e6 characters)")
    parser.add_argument("--baseline-mb", type=float, default=4.0, help="slice the baseline runs on")
    parser.add_argument("--window", type=int, default=1_000_000, help="window length for windowed rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (robust on a shared machine); wall: elapsed time")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)

    n = int(args.mb * 1e6)
    n_base = min(n, int(args.baseline_mb * 1e6))
    dna = DnaTokenizer()
    text = random_text("ACGTN", n, seed=0)
    dna_wins = windows(text, args.window)
    dna_table = {c: dna.token_to_id(c) for c in "ACGTN"}
    dna_table.update({c.lower(): i for c, i in dna_table.items()})
    dna_table.update({c: dna.token_to_id("N") for c in DNA_IUPAC + DNA_IUPAC.lower()})
    base_dna = dict_baseline(dna_table)

    # sanity: same ids both ways
    assert np.array_equal(dna.encode(text[:10_000]), base_dna(text[:10_000]))

    rows: list[tuple[str, float, float, float | None]] = []  # name, MB, bioseq MB/s, baseline MB/s

    t_base = best_seconds(lambda: base_dna(text[:n_base]), max(1, args.repeats - 1))
    base_mbs = n_base / t_base / 1e6
    t_win = best_seconds(each(dna.encode, dna_wins), args.repeats)
    rows.append((f"dna encode, {args.window / 1e6:g} Mb windows", n / 1e6, n / t_win / 1e6, base_mbs))
    t_one = best_seconds(lambda: dna.encode(text), args.repeats)
    rows.append(("dna encode, one call", n / 1e6, n / t_one / 1e6, base_mbs))

    id_wins = [dna.encode(w) for w in dna_wins]
    inverse = {i: c for c, i in dna_table.items() if c.isupper() and c in "ACGTN"}
    ids_base = id_wins[0][: min(n_base, len(id_wins[0]))].tolist()
    t_dbase = best_seconds(lambda: "".join([inverse[i] for i in ids_base]), max(1, args.repeats - 1))
    t_dec = best_seconds(each(dna.decode, id_wins), args.repeats)
    rows.append(("dna decode, windows", n / 1e6, n / t_dec / 1e6, len(ids_base) / t_dbase / 1e6))

    prot = ProteinTokenizer()
    n_prot = max(n // 4, 400)
    ptext = random_text(PROTEIN_STANDARD + PROTEIN_EXTRA, n_prot, seed=1)
    ptable = {c: prot.token_to_id(c) for c in prot.vocab[7:]}
    ptable.update({c.lower(): i for c, i in ptable.items()})
    base_prot = dict_baseline(ptable)
    p_n_base = min(n_prot, n_base)
    tp_base = best_seconds(lambda: base_prot(ptext[:p_n_base]), max(1, args.repeats - 1))
    records = windows(ptext[: min(n_prot, 8_000_000)], 400)
    tp_rec = best_seconds(each(prot.encode, records), args.repeats)
    rows.append(("protein encode, 400-aa records", len(records) * 400 / 1e6,
                 len(records) * 400 / tp_rec / 1e6, p_n_base / tp_base / 1e6))
    batches = [records[i:i + 64] for i in range(0, len(records), 64)]
    tp_batch = best_seconds(each(prot.batch_encode, batches), args.repeats)
    rows.append(("protein batch_encode, 64 x 400 aa", len(records) * 400 / 1e6,
                 len(records) * 400 / tp_batch / 1e6, p_n_base / tp_base / 1e6))
    p_wins = windows(ptext, args.window)
    tp_win = best_seconds(each(prot.encode, p_wins), args.repeats)
    rows.append((f"protein encode, {args.window / 1e6:g} Mb windows", n_prot / 1e6, n_prot / tp_win / 1e6,
                 p_n_base / tp_base / 1e6))

    print(f"one core (torch.set_num_threads(1)); {args.clock} time; baseline on {n_base / 1e6:g} MB "
          f"slices; best of {args.repeats}")
    print(f"{'case':34s} {'MB':>8s} {'bioseq MB/s':>12s} {'dict MB/s':>10s} {'ratio':>8s}")
    for name, mb, mbs, bmbs in rows:
        ratio = f"{mbs / bmbs:7.1f}x" if bmbs else "-"
        print(f"{name:34s} {mb:8.1f} {mbs:12.1f} {bmbs or 0:10.1f} {ratio:>8s}")

    ok = True
    for name, _, mbs, bmbs in rows[:2]:
        headline = name.startswith("dna encode,") and "windows" in name
        verdict_speed = mbs >= GOAL_MBS
        verdict_ratio = mbs / bmbs >= GOAL_RATIO
        tag = "goal" if headline else "info"
        print(f"{'PASS' if verdict_speed else 'FAIL'} [{tag}] {name}: {mbs:.0f} MB/s >= {GOAL_MBS:.0f} MB/s")
        print(f"{'PASS' if verdict_ratio else 'FAIL'} [{tag}] {name}: {mbs / bmbs:.1f}x >= "
              f"{GOAL_RATIO:.0f}x the dict baseline")
        if headline:
            ok = ok and verdict_speed and verdict_ratio
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
