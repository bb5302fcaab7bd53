"""``bioseq inspect FASTA...``: what is in these FASTA files?

Per file: number of records, total/min/median/max length, the alphabet (guessed, or given with
``--alphabet``), N fraction (DNA) or X fraction (protein), GC fraction (DNA), lowercase (soft-masked)
fraction, and every IUPAC / non-standard code, gap and invalid character with its count and first
occurrence (record id + 1-based position). ``--per-record`` adds a table, ``--json`` prints the
same as JSON. Invalid characters are reported, not fatal, unless ``--strict``.

JSON keys per file: ``records``, ``total_length``, ``min_length``, ``median_length``, ``max_length``,
``alphabet`` (+ ``alphabet_guessed``), ``n_fraction``/``n_count``/``gc_fraction`` (DNA, else null),
``x_fraction`` (protein), ``lowercase_fraction``/``lowercase_count``, ``composition`` (case-folded
character counts), and lists ``iupac`` (DNA: R Y S W K M B D H V; protein: the non-standard B Z J X U O),
``gaps`` (``-`` ``.``, and ``*`` for protein) and ``invalid``, each item ``{char, count, first_record,
first_position}``; ``per_record`` with ``--per-record``; ``index`` with ``--index``; ``seconds``.

Counting is vectorised: one ``np.bincount`` over each record's bytes; first positions come from one
``argmax`` per distinct unusual character.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bioseq.alphabets import DNA_CANONICAL as _DNA_CANON
from bioseq.alphabets import DNA_IUPAC as _DNA_IUPAC
from bioseq.alphabets import PROTEIN_GAPS as _GAPS
from bioseq.alphabets import PROTEIN_STANDARD as _PROT_CANON

HELP = "Summarise FASTA files: records, lengths, alphabet, N, lowercase and IUPAC content."

_PROT_EXTRA = "BZJXUO"  # ambiguity codes (B Z J X) and the non-standard residues U (Sec), O (Pyl)


def _classes(alphabet: str) -> dict[str, str]:
    """Upper-case characters per class for an alphabet; anything else is invalid."""
    if alphabet == "dna":
        return {"canonical": _DNA_CANON, "unknown": "N", "iupac": _DNA_IUPAC, "gap": _GAPS}
    return {"canonical": _PROT_CANON, "unknown": "", "iupac": _PROT_EXTRA, "gap": _GAPS + "*"}


def _fold(counts: np.ndarray) -> np.ndarray:
    """[256] byte counts -> [256] with lowercase letters added onto their uppercase."""
    out = counts.copy()
    out[65:91] += counts[97:123]
    out[97:123] = 0
    return out


def guess_alphabet(counts: np.ndarray) -> str:
    """"dna" when >= 90% of the letters are A C G T U N (either case), else "protein"."""
    folded = _fold(counts)
    letters = int(folded[65:91].sum())
    if letters == 0:
        return "dna"
    nuc = int(sum(folded[ord(c)] for c in "ACGTUN"))
    return "dna" if nuc >= 0.9 * letters else "protein"


def _char(b: int) -> str:
    return chr(b) if 32 < b < 127 else f"0x{b:02x}"


class _FileStats:
    """Accumulates counts and first positions over the records of one file."""

    def __init__(self, path: Path, compression: str, per_record: bool):
        self.path, self.compression, self.per_record = path, compression, per_record
        self.counts = np.zeros(256, dtype=np.int64)
        self.lengths: list[int] = []
        self.first: dict[int, tuple[str, int]] = {}  # folded byte -> (record, 1-based position)
        self.records: list[dict] = []

    def add(self, rid: str, seq: bytes) -> None:
        arr = np.frombuffer(seq, dtype=np.uint8)
        c = np.bincount(arr, minlength=256)
        self.counts += c
        self.lengths.append(arr.size)
        folded = _fold(c)
        for b in np.flatnonzero(folded):  # first occurrence of every character (once per file)
            b = int(b)
            if b in self.first:
                continue
            hit = arr == b
            if 65 <= b < 91:
                hit |= arr == b + 32
            self.first[b] = (rid, int(np.argmax(hit)) + 1)
        if self.per_record:
            n = max(arr.size, 1)
            self.records.append({
                "id": rid, "length": int(arr.size),
                "n_fraction": (int(folded[ord("N")])) / n,
                "gc_fraction": (int(folded[ord("G")]) + int(folded[ord("C")])) / n,
                "lowercase_fraction": int(c[97:123].sum()) / n,
                "_folded": folded,
            })

    def summary(self, alphabet: str | None) -> dict:
        lengths = np.asarray(self.lengths, dtype=np.int64)
        total = int(lengths.sum())
        alpha = alphabet or guess_alphabet(self.counts)
        folded = _fold(self.counts)
        classes = _classes(alpha)
        known = set(map(ord, "".join(classes.values())))

        def listing(chars) -> list[dict]:
            out = []
            for b in chars:
                if folded[b]:
                    rec, pos = self.first.get(b, (None, None))
                    out.append({"char": _char(b), "count": int(folded[b]), "first_record": rec,
                                "first_position": pos})
            return out

        invalid = [b for b in range(256) if folded[b] and b not in known]
        iupac = sorted(map(ord, classes["iupac"]))
        res = {
            "path": str(self.path),
            "compression": self.compression,
            "records": int(lengths.size),
            "total_length": total,
            "min_length": int(lengths.min()),
            "median_length": float(np.median(lengths)),
            "max_length": int(lengths.max()),
            "alphabet": alpha,
            "alphabet_guessed": alphabet is None,
            "n_fraction": int(folded[ord("N")]) / total if alpha == "dna" else None,
            "x_fraction": int(folded[ord("X")]) / total if alpha == "protein" else None,
            "gc_fraction": (int(folded[ord("G")] + folded[ord("C")]) / total) if alpha == "dna" else None,
            "n_count": int(folded[ord("N")]) if alpha == "dna" else None,
            "lowercase_fraction": int(self.counts[97:123].sum()) / total,
            "lowercase_count": int(self.counts[97:123].sum()),
            "composition": {_char(b): int(folded[b]) for b in np.flatnonzero(folded)},
            "iupac": listing(iupac),
            "gaps": listing(map(ord, classes["gap"])),
            "invalid": listing(invalid),
        }
        if self.per_record:
            rows = []
            for r in self.records:
                f = r["_folded"]
                row = {k: v for k, v in r.items() if k != "_folded"}
                row["iupac"] = "".join(chr(b) for b in iupac if f[b])
                row["invalid"] = "".join(_char(b) for b in range(256) if f[b] and b not in known)
                if alpha != "dna":
                    row["n_fraction"] = row["gc_fraction"] = None
                rows.append(row)
            res["per_record"] = rows
        return res


def inspect_file(path: str | Path, *, alphabet: str | None = None, strict: bool = False,
                 per_record: bool = False, allow_duplicates: bool = False, skip_empty: bool = False,
                 index: bool = False) -> dict:
    """Summary dict of one FASTA file (the JSON that ``bioseq inspect --json`` prints per file).

    ``strict`` with an alphabet makes any character outside it a :class:`FastaCharacterError`
    (with ``alphabet=None`` the guessed alphabet is used, and the file is re-read to locate the line).
    ``index`` also builds (or finds) the ``.fai``/``.gzi`` random-access index, which fails on plain
    gzip and on ragged line lengths; its path is reported under ``"index"``.
    """
    from bioseq.fasta import detect_compression, read_fasta

    path = Path(path)
    start = time.perf_counter()
    stats = _FileStats(path, detect_compression(path), per_record)
    check = alphabet if strict else None
    for rec in read_fasta(path, allow_duplicates=allow_duplicates, skip_empty=skip_empty, alphabet=check,
                          as_bytes=True):
        stats.add(rec.id, rec.seq)
    if not stats.lengths:  # every record was empty and skipped
        from bioseq.fasta import FastaFormatError

        raise FastaFormatError("no non-empty records", path=path)
    res = stats.summary(alphabet)
    if strict and alphabet is None and res["invalid"]:
        for _ in read_fasta(path, allow_duplicates=allow_duplicates, skip_empty=skip_empty,
                            alphabet=res["alphabet"], as_bytes=True):
            pass
    if index:
        from bioseq.fasta import IndexedFasta

        res["index"] = str(IndexedFasta(path, skip_empty=skip_empty).fai_path)
    res["seconds"] = round(time.perf_counter() - start, 3)
    return res


def _fmt_chars(items: list[dict]) -> str:
    if not items:
        return "none"
    return ", ".join(f"{i['char']} x{i['count']:,} (first at {i['first_record']}:{i['first_position']:,})"
                     for i in items)


def format_summary(res: dict) -> str:
    """Human-readable block for one file."""
    alpha = res["alphabet"].upper() + (" (guessed)" if res["alphabet_guessed"] else "")
    unit = "bp" if res["alphabet"] == "dna" else "aa"
    lines = [
        f"{res['path']}  [{res['compression']}]",
        f"  records           {res['records']:,}",
        f"  total length      {res['total_length']:,} {unit}",
        f"  length min/median/max  {res['min_length']:,} / {res['median_length']:,.1f} / "
        f"{res['max_length']:,} {unit}",
        f"  alphabet          {alpha}",
    ]
    if res["n_fraction"] is not None:
        lines.append(f"  N fraction        {res['n_fraction']:.6f} ({res['n_count']:,} N)")
        lines.append(f"  GC fraction       {res['gc_fraction']:.6f}")
    if res["x_fraction"] is not None:
        lines.append(f"  X fraction        {res['x_fraction']:.6f}")
    lines += [
        f"  lowercase         {res['lowercase_fraction']:.6f}",
        f"  {'IUPAC codes' if res['alphabet'] == 'dna' else 'non-standard':<17} {_fmt_chars(res['iupac'])}",
        f"  gaps/stops        {_fmt_chars(res['gaps'])}",
        f"  invalid           {_fmt_chars(res['invalid'])}",
    ]
    if "index" in res:
        lines.append(f"  index             {res['index']}")
    lines += [
        f"  time              {res['seconds']:.2f} s",
    ]
    if "per_record" in res:
        rows = res["per_record"]
        width = min(max([len(r["id"]) for r in rows] + [2]), 40)
        lines.append("")
        lines.append(f"  {'id':<{width}} {'length':>12} {'N':>8} {'GC':>8} {'lower':>8}  iupac  invalid")
        for r in rows:
            n = "-" if r["n_fraction"] is None else f"{r['n_fraction']:.4f}"
            gc = "-" if r["gc_fraction"] is None else f"{r['gc_fraction']:.4f}"
            lines.append(f"  {r['id']:<{width}} {r['length']:>12,} {n:>8} {gc:>8} "
                         f"{r['lowercase_fraction']:>8.4f}  {r['iupac'] or '-':<5}  {r['invalid'] or '-'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioseq inspect", description=HELP + " Plain, gzip and BGZF input.")
    p.add_argument("fasta", nargs="+",
                   help="FASTA files (plain, gzip or BGZF; detected from the bytes); - reads standard input")
    p.add_argument("--per-record", action="store_true", help="add one row per record")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file)")
    p.add_argument("--alphabet", choices=["auto", "dna", "protein"], default="auto",
                   help="classify characters with this alphabet instead of guessing (default: auto)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) on the first character outside the alphabet instead of reporting it")
    p.add_argument("--allow-duplicates", action="store_true", help="accept repeated record ids")
    p.add_argument("--skip-empty", action="store_true",
                   help="skip records with no sequence instead of failing")
    p.add_argument("--index", action="store_true",
                   help="also build/check the .fai (+.gzi) random-access index: fails on plain gzip and "
                        "ragged line lengths")
    return p


#: Remedies of FASTA errors, phrased with this command's flags.
HINTS = {"allow_duplicates": "pass --allow-duplicates to accept it",
         "skip_empty": "pass --skip-empty to skip empty records"}


def main(argv: list[str]) -> int:
    from bioseq.commands.common import SpooledInputs, check_input_file
    from bioseq.errors import BioseqError
    from bioseq.fasta import FastaError

    args = build_parser().parse_args(argv)
    alphabet = None if args.alphabet == "auto" else args.alphabet
    for path in args.fasta:
        check_input_file(path)
    results = []
    with SpooledInputs(args.fasta) as spool:
        if args.index and spool.paths != spool.names:
            raise BioseqError("--index needs files, not standard input or a pipe")
        for i, (path, name) in enumerate(zip(spool.paths, spool.names)):
            try:
                res = inspect_file(path, alphabet=alphabet, strict=args.strict, per_record=args.per_record,
                                   allow_duplicates=args.allow_duplicates, skip_empty=args.skip_empty,
                                   index=args.index)
            except FastaError as err:
                shown = None if path == name else ("<stdin>" if name == "-" else name)
                raise err.with_hint(HINTS, path=shown) from None
            if path != name:
                res["path"] = "<stdin>" if name == "-" else name
            results.append(res)
            if not args.json:
                if i:
                    print()
                print(format_summary(res), flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0
