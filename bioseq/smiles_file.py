"""SMILES files: the one reader (``bioseq embed --smiles``, the SMILES DataModule, in-context evaluation).

Formats (gzip detected by its magic bytes):

* text (``.smi``, ``.smiles``, ``.txt``, or any file when no column is asked for and the name does
  not end in ``.csv``/``.tsv``/``.tab``): one SMILES per line, optionally followed by whitespace and a
  name; blank lines and ``#`` comments are skipped; a first line ``smiles ...`` is a header.
* CSV / TSV (``,`` or tab, detected from the name or the header line): the SMILES ``column``
  (default ``smiles``, matched case-insensitively when no exact match) and an optional ``id_column``.

Each entry: ``SmilesEntry(id, smiles, line)`` with the 1-based line of the file; an entry without a
name gets the number of its data row (1-based). Empty SMILES cells are skipped. Every problem (missing
file or column, a short row, bad UTF-8, no SMILES at all) is a one-line :class:`BioseqError` naming the
file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bioseq.errors import BioseqError, locate

TEXT_SUFFIXES = (".smi", ".smiles", ".txt")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")


@dataclass(frozen=True)
class SmilesEntry:
    id: str
    smiles: str
    line: int


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise BioseqError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def is_text_format(path: str | os.PathLike, column: str | None = None) -> bool:
    """Whether ``path`` is read as one-SMILES-per-line text (see the module docstring)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(TEXT_SUFFIXES):
        return True
    return column is None and not name.endswith(TABLE_SUFFIXES)


def _iter_text(path: Path, fh) -> Iterator[SmilesEntry]:
    n = 0
    for lineno, text in enumerate(fh, 1):
        fields = text.split(maxsplit=1)
        if not fields or fields[0].startswith("#"):
            continue
        if n == 0 and fields[0].lower() == "smiles":
            continue  # header line
        n += 1
        name = fields[1].strip() if len(fields) > 1 else ""
        yield SmilesEntry(name or str(n), fields[0], lineno)


def _find_column(path: Path, header: list[str], name: str) -> int:
    if name in header:
        return header.index(name)
    lowered = [h.lower() for h in header]
    if name.strip().lower() in lowered:
        return lowered.index(name.strip().lower())
    raise BioseqError(f"{locate(path, line=1)}: no column {name!r}; the columns are "
                      f"{', '.join(repr(h) for h in header)}")


def _iter_table(path: Path, fh, column: str, id_column: str | None) -> Iterator[SmilesEntry]:
    header_line = fh.readline()
    if not header_line.strip():
        raise BioseqError(f"{locate(path, line=1)}: empty file or missing header line")
    name = path.name.lower().removesuffix(".gz")
    delimiter = "\t" if name.endswith((".tsv", ".tab")) or "\t" in header_line else ","
    header = [h.strip() for h in next(csv.reader([header_line], delimiter=delimiter))]
    col = _find_column(path, header, column)
    id_col = _find_column(path, header, id_column) if id_column else None
    need = max(col, id_col or 0)
    n = 0
    for lineno, row in enumerate(csv.reader(fh, delimiter=delimiter), 2):
        if not row:
            continue
        if len(row) <= need:
            raise BioseqError(f"{locate(path, line=lineno)}: {len(row)} fields, the header has {len(header)}")
        n += 1
        smi = row[col].strip()
        if smi:
            rid = row[id_col].strip() if id_col is not None else ""
            yield SmilesEntry(rid or str(n), smi, lineno)


def iter_smiles(path: str | os.PathLike, column: str | None = None,
                id_column: str | None = None) -> Iterator[SmilesEntry]:
    """Stream the SMILES of a text / CSV / TSV file (see the module docstring)."""
    path = Path(path)
    count = 0
    try:
        with _open_text(path) as fh:
            entries = _iter_text(path, fh) if is_text_format(path, column) else \
                _iter_table(path, fh, column or "smiles", id_column)
            for entry in entries:
                count += 1
                yield entry
    except UnicodeDecodeError as exc:
        raise BioseqError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise BioseqError(f"{path}: cannot read ({exc})") from None
    if count == 0:
        raise BioseqError(f"{path}: no SMILES in the file (empty, or only blank and comment lines)")


def read_smiles(path: str | os.PathLike, column: str = "smiles") -> list[tuple[str, int]]:
    """``(SMILES, 1-based line)`` of every entry of a file, in order."""
    return [(e.smiles, e.line) for e in iter_smiles(path, column=column)]
