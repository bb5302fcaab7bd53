"""A deterministic synthetic genome and a matching toy classification task (for ``bioseq demo`` and tests).

Everything is a pure function of ``SyntheticConfig`` (seed included) and is generated with vectorised
numpy in well under a second for the default 3 Mb.

Generative process of the genome (in this order; later steps overwrite earlier ones):

1. **Background**: an order-``k`` Markov chain (default k = 3) over A C G T. The transition table
   ``P(next | previous k bases)`` starts from a base composition with GC fraction ``gc`` (default
   0.41, human-like), multiplies each entry by log-normal noise (sigma 0.35, drawn from the seed) so
   that contexts matter, makes homopolymer runs stickier (``AAA -> A`` and ``TTT -> T`` x1.6), and
   depletes CpG (``P(G | ..C)`` x ``cpg_depletion`` = 0.25, vertebrate-like observed/expected CpG). The
   chain is sampled as 2,048 independent chains stepped together (one numpy operation per position of
   each chain) and concatenated; chains start from the stationary-ish base composition.
2. **CpG islands**: about one per ``cpg_island_every`` bp (80 kb), 500-2,000 bp of i.i.d. bases with
   GC 0.66 and no CpG depletion (upper case).
3. **Promoters**: about one per ``promoter_every`` bp (25 kb); a TATA-like box sampled from the
   consensus ``TATAWAWR`` (W = A/T, R = A/G) is written 30 bp upstream of a "TSS"; half of the promoters
   are placed at the 3' end of a CpG island.
4. **Interspersed repeats** (soft-masked, lower case): three families with fixed random consensus
   sequences drawn from the seed: ``SINE`` (300 bp, GC 0.52, ending in a 20 bp poly-A tail), ``LTR``
   (500 bp, GC 0.45) and ``LINE`` (6,000 bp, GC 0.38, inserted 5'-truncated to 300-6,000 bp). Copies
   are diverged by 2-20% point substitutions, inserted on a random strand at random positions, to a
   total of about ``interspersed_fraction`` (12%) of the genome.
5. **Tandem repeats** (lower case): microsatellites (unit 1-6 bp, 20-120 bp long) about one per 8 kb,
   and minisatellites (unit 10-60 bp, 200-1,500 bp) about one per 100 kb; copies carry 3% substitutions.
6. **Assembly gaps**: one run of 1,000-5,000 ``N`` per chromosome.

Every planted feature is listed in ``features.bed`` (``chrom start end name score strand``, 0-based
half-open). The split file ``splits.bed`` (``chrom start end split``, the HyenaDNA ``sequences.bed``
convention) tiles the genome in ``interval`` bp intervals: the last 10% of each chromosome is held out
(the first half of that tail ``valid``, the second ``test``), the rest is ``train``.

The toy task (``motif_train.tsv`` / ``motif_test.tsv``, columns ``seq`` and ``label``, the Genomic
Benchmarks TSV layout): ``length``-bp sequences sampled from the same background chain; label 1 when a
``TATAWAWR`` box is planted at a uniformly random position, label 0 when the sequence contains no
match to ``TATAWAWR`` on either strand. Classes are balanced and interleaved in a seeded order.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path

import numpy as np

from bioseq.alphabets import COMPLEMENT_BYTES

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
COMPLEMENT = COMPLEMENT_BYTES
TATA_CONSENSUS = "TATAWAWR"
_IUPAC = {"A": b"A", "C": b"C", "G": b"G", "T": b"T", "W": b"AT", "R": b"AG"}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """All knobs of the synthetic genome and task; the defaults give 3 Mb in 3 chromosomes."""

    seed: int = 0
    chromosomes: tuple[tuple[str, int], ...] = (("chr1", 1_500_000), ("chr2", 1_000_000), ("chr3", 500_000))
    markov_order: int = 3
    gc: float = 0.41
    cpg_depletion: float = 0.25
    cpg_island_every: int = 80_000
    promoter_every: int = 25_000
    interspersed_fraction: float = 0.12
    microsatellite_every: int = 8_000
    minisatellite_every: int = 100_000
    interval: int = 16_384
    holdout_fraction: float = 0.1
    task_length: int = 200
    task_train: int = 2_000
    task_test: int = 500


# ---------------------------------------------------------------------------------- background
def transition_table(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """``P(next | context)`` as float64[4**k, 4]; context index = base-4 number of the k previous bases."""
    k = config.markov_order
    base = np.array([(1 - config.gc) / 2, config.gc / 2, config.gc / 2, (1 - config.gc) / 2])
    table = base * rng.lognormal(0.0, 0.35, size=(4**k, 4))
    contexts = np.arange(4**k)
    last = contexts % 4
    table[last == 1, 2] *= config.cpg_depletion  # C followed by G
    if k >= 3:
        table[0, 0] *= 1.6  # AAA -> A
        table[4**k - 1, 3] *= 1.6  # TTT -> T
    return table / table.sum(axis=1, keepdims=True)


def sample_markov(table: np.ndarray, n_chains: int, length: int, rng: np.random.Generator,
                  gc: float = 0.41) -> np.ndarray:
    """``n_chains`` independent chains of ``length`` bases (uint8 ASCII), sampled in lockstep."""
    k = int(round(np.log(table.shape[0]) / np.log(4)))
    cum = np.cumsum(table, axis=1)
    cum[:, -1] = 1.0
    start_p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    ctx = np.zeros(n_chains, dtype=np.int64)
    for _ in range(k):  # random initial context
        ctx = ctx * 4 + rng.choice(4, size=n_chains, p=start_p)
    out = np.empty((n_chains, length), dtype=np.int64)
    u = rng.random((length, n_chains))
    modulus = 4**k
    for t in range(length):
        nxt = (u[t, :, None] > cum[ctx]).sum(axis=1)
        out[:, t] = nxt
        ctx = (ctx * 4 + nxt) % modulus
    return BASES[out]


def _iid(n: int, gc: float, rng: np.random.Generator) -> np.ndarray:
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    return BASES[rng.choice(4, size=n, p=p)]


def _mutate(seq: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    seq = seq.copy()
    hit = rng.random(len(seq)) < rate
    seq[hit] = BASES[rng.integers(0, 4, size=int(hit.sum()))]
    return seq


def reverse_complement(seq: np.ndarray) -> np.ndarray:
    """Reverse complement of an ASCII uint8 array (case kept)."""
    return COMPLEMENT[seq[::-1]]


def sample_consensus(pattern: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` instances of an IUPAC pattern (A C G T W R) as uint8[n, len(pattern)]."""
    cols = []
    for ch in pattern:
        choices = np.frombuffer(_IUPAC[ch], dtype=np.uint8)
        cols.append(choices[rng.integers(0, len(choices), size=n)])
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------------- genome
def generate_genome(config: SyntheticConfig = SyntheticConfig()) -> tuple[dict[str, np.ndarray], list]:
    """Returns ``({chrom: uint8 ASCII array}, features)``; features are ``(chrom, start, end, name,
    strand)`` tuples in planting order."""
    rng = np.random.default_rng(config.seed)
    table = transition_table(config, rng)
    total = sum(n for _, n in config.chromosomes)
    n_chains = 2048
    background = sample_markov(table, n_chains, -(-total // n_chains), rng, config.gc).reshape(-1)[:total]
    genome, features = {}, []
    offset = 0
    families = {
        "SINE": np.concatenate([_iid(280, 0.52, rng), np.full(20, ord("A"), dtype=np.uint8)]),
        "LTR": _iid(500, 0.45, rng),
        "LINE": _iid(6000, 0.38, rng),
    }
    for chrom, length in config.chromosomes:
        seq = background[offset: offset + length].copy()
        offset += length
        feats = []

        def put(start, piece, name, strand="+", _seq=seq, _feats=feats, _chrom=chrom):
            piece = piece[: len(_seq) // 4]  # short test chromosomes: features never dominate
            start = int(min(max(start, 0), len(_seq) - len(piece)))
            _seq[start: start + len(piece)] = piece
            _feats.append((_chrom, start, start + len(piece), name, strand))
            return start

        # 2. CpG islands
        islands = []
        for _ in range(rng.poisson(length / config.cpg_island_every)):
            size = int(rng.integers(500, 2001))
            start = put(rng.integers(0, max(1, length - size)), _iid(size, 0.66, rng), "CpG_island")
            islands.append(start + min(size, length // 4))
        # 3. promoters: TATA box 30 bp upstream of a TSS
        n_prom = rng.poisson(length / config.promoter_every)
        boxes = sample_consensus(TATA_CONSENSUS, n_prom, rng)
        for i in range(n_prom):
            at_island = i % 2 == 0 and i // 2 < len(islands)
            tss = islands[i // 2] + 40 if at_island else rng.integers(100, length)
            strand = "+" if rng.random() < 0.5 else "-"
            box = boxes[i] if strand == "+" else reverse_complement(boxes[i])
            start = tss - 30 - len(box) if strand == "+" else tss + 30
            put(start, box, "TATA_box", strand)
        # 4. interspersed repeats (soft-masked)
        budget = config.interspersed_fraction * length
        while budget > 0:
            family = str(rng.choice(["SINE", "SINE", "LTR", "LINE"]))
            copy = families[family]
            if family == "LINE":
                copy = copy[-int(rng.integers(300, len(copy) + 1)):]
            copy = _mutate(copy, float(rng.uniform(0.02, 0.2)), rng)
            strand = "+" if rng.random() < 0.5 else "-"
            if strand == "-":
                copy = reverse_complement(copy)
            put(rng.integers(0, max(1, length - len(copy))), copy | 0x20, family, strand)
            budget -= len(copy)
        # 5. tandem repeats (soft-masked)
        for name, every, unit_range, span_range in (("microsatellite", config.microsatellite_every, (1, 7),
                                                     (20, 121)),
                                                    ("minisatellite", config.minisatellite_every, (10, 61),
                                                     (200, 1501))):
            for _ in range(rng.poisson(length / every)):
                unit = _iid(int(rng.integers(*unit_range)), 0.5, rng)
                span = int(rng.integers(*span_range))
                piece = _mutate(np.resize(unit, span), 0.03, rng) | 0x20
                put(rng.integers(0, max(1, length - span)), piece, name)
        # 6. an assembly gap
        gap = min(int(rng.integers(1000, 5001)), length // 20)
        put(rng.integers(gap, length - 2 * gap), np.full(gap, ord("N"), dtype=np.uint8), "gap")
        genome[chrom] = seq
        features.extend(feats)
    return genome, features


def split_intervals(config: SyntheticConfig = SyntheticConfig()) -> list[tuple[str, int, int, str]]:
    """``(chrom, start, end, split)`` rows tiling each chromosome (see the module docstring)."""
    rows = []
    for chrom, length in config.chromosomes:
        held = int(length * (1 - config.holdout_fraction))
        mid = held + (length - held) // 2
        for lo, hi, split in ((0, held, "train"), (held, mid, "valid"), (mid, length, "test")):
            for start in range(lo, hi, config.interval):
                rows.append((chrom, start, min(start + config.interval, hi), split))
    return rows


# ---------------------------------------------------------------------------------- task
def _has_tata(seqs: np.ndarray) -> np.ndarray:
    """bool[N]: does each row (uint8[N, L], upper case) contain TATAWAWR on either strand?"""
    windows = np.lib.stride_tricks.sliding_window_view(seqs, len(TATA_CONSENSUS), axis=1)
    hit = np.zeros(windows.shape[:2], dtype=bool)
    for pattern in (TATA_CONSENSUS, "YWTWTATA"):  # the consensus and its reverse complement
        ok = np.ones(windows.shape[:2], dtype=bool)
        for j, ch in enumerate(pattern):
            allowed = {"W": b"AT", "R": b"AG", "Y": b"CT"}.get(ch, ch.encode())
            ok &= np.isin(windows[:, :, j], np.frombuffer(allowed, dtype=np.uint8))
        hit |= ok
    return hit.any(axis=1)


def generate_motif_task(config: SyntheticConfig = SyntheticConfig()) -> tuple[list, list]:
    """``(train_rows, test_rows)`` of ``(seq, label)``; balanced; deterministic in ``config.seed``."""
    rng = np.random.default_rng(config.seed + 1)
    table = transition_table(config, np.random.default_rng(config.seed))  # the genome's background
    n = config.task_train + config.task_test
    length = config.task_length
    seqs = sample_markov(table, 2 * n, length, rng, config.gc)
    clean = seqs[~_has_tata(seqs)][:n]  # about 2% of background sequences contain a box by chance
    if len(clean) < n:
        raise RuntimeError("not enough motif-free background sequences")  # cannot happen for L <= 1000
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[: n // 2]] = 1
    positives = np.flatnonzero(labels)
    boxes = sample_consensus(TATA_CONSENSUS, len(positives), rng)
    starts = rng.integers(0, length - len(TATA_CONSENSUS) + 1, size=len(positives))
    for row, box, start in zip(positives, boxes, starts):
        clean[row, start: start + len(box)] = box
    rows = [(bytes(s).decode(), int(y)) for s, y in zip(clean, labels)]
    return rows[: config.task_train], rows[config.task_train:]


# ---------------------------------------------------------------------------------- writers
def write_fasta(path, records: dict[str, np.ndarray], width: int = 80) -> Path:
    """Write ``{name: uint8 ASCII}`` as FASTA with ``width``-column lines (gzip when path ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n".encode())
            full = len(seq) // width * width
            if full:
                block = np.concatenate([seq[:full].reshape(-1, width),
                                        np.full((full // width, 1), ord("\n"), dtype=np.uint8)], axis=1)
                fh.write(block.tobytes())
            if full < len(seq):
                fh.write(seq[full:].tobytes() + b"\n")
    return path


@dataclasses.dataclass(frozen=True)
class SyntheticFiles:
    """Paths written by :func:`write_synthetic`."""

    fasta: Path
    splits_bed: Path
    features_bed: Path
    task_train: Path
    task_test: Path


def write_synthetic(out_dir, config: SyntheticConfig = SyntheticConfig()) -> SyntheticFiles:
    """Generate and write ``genome.fa``, ``splits.bed``, ``features.bed``, ``motif_train.tsv`` and
    ``motif_test.tsv`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    genome, features = generate_genome(config)
    files = SyntheticFiles(out / "genome.fa", out / "splits.bed", out / "features.bed",
                           out / "motif_train.tsv", out / "motif_test.tsv")
    write_fasta(files.fasta, genome)
    files.splits_bed.write_text("".join(f"{c}\t{s}\t{e}\t{sp}\n" for c, s, e, sp in split_intervals(config)))
    files.features_bed.write_text(
        "".join(f"{c}\t{s}\t{e}\t{name}\t0\t{strand}\n" for c, s, e, name, strand in features))
    train, test = generate_motif_task(config)
    for path, rows in ((files.task_train, train), (files.task_test, test)):
        path.write_text("seq\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return files


def gc_fraction(seq: np.ndarray) -> float:
    """GC fraction among A/C/G/T (either case) of an ASCII array."""
    upper = seq & 0xDF
    acgt = np.isin(upper, BASES)
    return float(np.isin(upper[acgt], np.frombuffer(b"CG", dtype=np.uint8)).mean())


def cpg_observed_expected(seq: np.ndarray) -> float:
    """CpG observed/expected ratio (Gardiner-Garden) of an ASCII array, case folded."""
    upper = seq & 0xDF
    c, g = (upper == ord("C")).sum(), (upper == ord("G")).sum()
    cg = ((upper[:-1] == ord("C")) & (upper[1:] == ord("G"))).sum()
    return float(cg * len(seq) / max(1, c * g))


TATA_REGEX = re.compile(r"TATA[AT]A[AT][AG]")


# ---------------------------------------------------------------------------------- baselines
def acgt_codes(seq) -> np.ndarray:
    """int8 codes A0 C1 G2 T3 (case folded), -1 for anything else, of a str/bytes/uint8 array."""
    if isinstance(seq, str):
        seq = seq.encode()
    arr = np.frombuffer(seq, dtype=np.uint8) if isinstance(seq, (bytes, bytearray)) else np.asarray(seq)
    table = np.full(256, -1, dtype=np.int8)
    for i, ch in enumerate(b"ACGT"):
        table[ch] = table[ch | 0x20] = i
    return table[arr]


def markov_perplexity(train, test, order: int, alpha: float = 1.0) -> float:
    """Per-base perplexity on ``test`` of an order-``order`` Markov model fit on ``train``.

    Both are base codes from :func:`acgt_codes` (or sequences). Counts of (k previous bases, next
    base) with add-``alpha`` smoothing; a test base is scored when it and its k predecessors are all
    ACGT (the first k bases of ``test`` are not scored). Returns ``exp(mean negative log-likelihood)``.
    """
    train = acgt_codes(train) if not isinstance(train, np.ndarray) or train.dtype != np.int8 else train
    test = acgt_codes(test) if not isinstance(test, np.ndarray) or test.dtype != np.int8 else test

    def contexts(codes):
        n = len(codes) - order
        ctx = np.zeros(n, dtype=np.int64)
        ok = codes[order:] >= 0
        for j in range(order):
            c = codes[j: j + n]
            ctx = ctx * 4 + np.maximum(c, 0)
            ok &= c >= 0
        return ctx[ok], codes[order:][ok].astype(np.int64)

    ctx, nxt = contexts(train)
    counts = np.bincount(ctx * 4 + nxt, minlength=4 ** (order + 1)).reshape(-1, 4) + alpha
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    ctx, nxt = contexts(test)
    return float(np.exp(-logp[ctx, nxt].mean()))
