"""FASTA input: streaming records, indexed windows, and one error family for bad files.

Two ways in:

* :func:`read_fasta` streams records from plain, gzip or BGZF FASTA (compression is detected from
  the magic bytes, never from the file name) and validates as it goes. Use it for corpora and for
  ``bioseq embed`` / ``bioseq inspect`` input.
* :class:`IndexedFasta` gives random access to windows (``fetch(name, start, end)``, 0-based,
  half-open) through pyfaidx, for genome-window datasets. The ``.fai`` (and, for BGZF, ``.gzi``)
  index is built once by :func:`ensure_index`; the pyfaidx handle opens lazily and reopens when
  the process id changes, so an object created before a DataLoader forks its workers is safe.

Where the index files go: next to the FASTA (``x.fa.fai``, ``x.fa.gz.gzi``, as samtools does)
when a fresh index is already there or the directory is writable; otherwise (read-only data such
as ``../shared``) under ``$BIOSEQ_CACHE/fai/<key>/`` (default ``$XDG_CACHE_HOME/bioseq`` or
``~/.cache/bioseq``), where ``<key>`` hashes the FASTA's absolute path, size and mtime, so an edited
file gets a new index. A directory with no write permission bits counts as read-only even for root.

Defined behaviour on bad input (each raises a :class:`FastaError` subclass whose one-line message
names the file, the record, and the line and/or position; the CLI prints it and exits 2):

=====================================  ===========================================================
missing file / a directory             :class:`FastaFileError`
empty file (or only blank lines)       :class:`FastaFormatError` "empty file"
text before the first ``>``            :class:`FastaFormatError` (blank lines and a UTF-8 BOM
                                       before it are fine; ``;`` comment lines are not)
header without an id (``>`` alone)     :class:`FastaFormatError`
empty record (header, no sequence)     :class:`FastaFormatError`, unless ``skip_empty=True``,
                                       which drops such records
duplicate record ids                   :class:`FastaDuplicateError`, unless
                                       ``allow_duplicates=True``
a pipe, stdin or a device              :class:`FastaFileError` (the readers open a file more than
                                       once; ``bioseq inspect`` / ``embed`` copy ``-`` first)
CRLF line endings                      accepted: the ``\\r`` is stripped
CR-only ("old Mac") line endings       :class:`FastaFormatError`
truncated / corrupt gzip               :class:`FastaCompressionError` (with the last line read)
bzip2 / xz / zstd / zip                :class:`FastaCompressionError` "decompress first"
plain gzip for indexed access          :class:`FastaCompressionError` "compress with bgzip or
                                       decompress"
non-ASCII byte in a sequence           :class:`FastaCharacterError` (headers may be UTF-8)
binary file / control bytes            :class:`FastaFormatError` / :class:`FastaCharacterError`
ragged line lengths (indexed access)   :class:`FastaIndexError` naming the record and the line
character outside ``alphabet``         :class:`FastaCharacterError` (only when ``alphabet`` given)
=====================================  ===========================================================

Sequence lines lose trailing whitespace (spaces, tabs, ``\\r``); blank lines inside a record are
skipped when streaming but make the record ragged for indexed access.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioseq.alphabets import FASTA_ALPHABETS
from bioseq.errors import BioseqError, locate

__all__ = [
    "FastaRecord", "read_fasta", "IndexedFasta", "ensure_index", "detect_compression",
    "FastaError", "FastaFileError", "FastaFormatError", "FastaDuplicateError", "FastaCharacterError",
    "FastaCompressionError", "FastaIndexError", "ALPHABETS", "TINY_FASTA",
]

#: A tiny DNA FASTA bundled with the package (examples, smoke tests).
TINY_FASTA = Path(__file__).resolve().parent / "data" / "tiny.fa"

_READ_BUFFER = 1 << 20


# ----------------------------------------------------------------------------------------------
# errors


class FastaError(BioseqError):
    """Bad FASTA input. ``path``, ``record`` (id), ``line`` (1-based) and ``position`` (1-based,
    within the record's sequence) are set where known and all appear in the one-line message."""

    def __init__(self, message: str, *, path: object = None, record: str | None = None,
                 line: int | None = None, position: int | None = None, remedy: str | None = None,
                 hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.record = record
        self.line = line
        self.position = position
        self.remedy = remedy  # the read_fasta keyword that accepts this input, e.g. "allow_duplicates"
        if hint is None and remedy is not None:
            hint = LIBRARY_HINTS[remedy]
        where = locate(self.path, record, line, position)
        text = f"{message}; {hint}" if hint else message
        super().__init__(f"{where}: {text}" if where else text)

    def with_hint(self, hints: dict[str, str], path: object = None) -> FastaError:
        """The same error with the remedy phrased for a command (``hints``: remedy -> text; without a
        matching hint the message names no remedy, never a flag the command does not have), and
        optionally another name for the file (``path``: e.g. ``<stdin>`` for a copied stream)."""
        if self.remedy is None and path is None:
            return self
        hint = hints.get(self.remedy, "") if self.remedy is not None else None
        return type(self)(self.message, path=self.path if path is None else path, record=self.record,
                          line=self.line, position=self.position, remedy=self.remedy, hint=hint)


#: The remedy of an error in library terms (commands rephrase it with ``FastaError.with_hint``).
LIBRARY_HINTS = {
    "allow_duplicates": "pass allow_duplicates=True to accept it",
    "skip_empty": "pass skip_empty=True to drop empty records",
}


class FastaFileError(FastaError):
    """The path is missing, a directory, or unreadable."""


class FastaFormatError(FastaError):
    """The bytes are not FASTA: text before ``>``, empty file/record, CR line endings, binary."""


class FastaDuplicateError(FastaError):
    """Two records share an id."""


class FastaCharacterError(FastaError):
    """A byte that cannot be in a sequence: non-ASCII, a control byte, or outside the alphabet."""


class FastaCompressionError(FastaError):
    """Truncated or corrupt gzip, an unsupported compression, or plain gzip for indexed access."""


class FastaIndexError(FastaError):
    """The file cannot be indexed (ragged lines) or the index / a fetch request is invalid."""


# ----------------------------------------------------------------------------------------------
# records, alphabets


@dataclass
class FastaRecord:
    """One FASTA record.

    ``id``: the header up to the first whitespace; ``description``: the rest of the header line
    (stripped, may be empty); ``seq``: the sequence with line breaks removed, case kept (``str``,
    or ``bytes`` when read with ``as_bytes=True``); ``line``: 1-based line number of the header.
    """

    id: str
    description: str
    seq: str | bytes
    line: int

    def __len__(self) -> int:
        return len(self.seq)


def _lut(chars: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    for c in chars + chars.lower():
        table[ord(c)] = True
    return table


#: Characters accepted when ``alphabet`` is given (either case). DNA: ACGT, N and the IUPAC
#: ambiguity codes. Protein: the 20 standard residues, B Z J X U O, ``*`` stop, ``-``/``.`` gaps.
ALPHABETS: dict[str, str] = dict(FASTA_ALPHABETS)
_ALPHABET_LUT = {name: _lut(chars) for name, chars in ALPHABETS.items()}


# ----------------------------------------------------------------------------------------------
# opening: magic bytes, compression


_MAGIC = [
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FastaFileError("no such file", path=path)
    if path.is_dir():
        raise FastaFileError("is a directory, not a FASTA file", path=path)
    if not path.is_file():
        raise FastaFileError("not a regular file (a pipe or a device): the reader needs a file it can "
                             "open twice; save the stream to a file first", path=path)
    if not os.access(path, os.R_OK):
        raise FastaFileError("permission denied", path=path)


def detect_compression(path: str | os.PathLike) -> str:
    """``"plain"``, ``"gzip"`` or ``"bgzf"``, from the first bytes of the file (not its name).

    Raises :class:`FastaFileError` for a missing file or a directory and
    :class:`FastaCompressionError` for bzip2, xz, zstd or zip.
    """
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] == b"\x1f\x8b":
        # BGZF = gzip member with FEXTRA (FLG bit 2) whose first extra subfield is 'BC'
        if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
            return "bgzf"
        return "gzip"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            raise FastaCompressionError(f"{name}-compressed files are not supported; decompress it "
                                        "(or recompress with bgzip)", path=path)
    return "plain"


def _open_binary(path: Path, compression: str):
    if compression == "plain":
        return open(path, "rb", buffering=_READ_BUFFER)
    # GzipFile buffers by itself; its small reads keep a truncation error close to the line it hits
    return gzip.GzipFile(path, "rb")


# ----------------------------------------------------------------------------------------------
# the scanner shared by read_fasta and the indexer


@dataclass
class _Raw:
    """A record as the scanner sees it (internal). Offsets are in uncompressed bytes."""

    id: str
    description: str
    line: int                  # header line, 1-based
    seq: bytes
    line_lengths: list[int]    # bases on each line after the header (blank lines give 0)
    offset: int                # uncompressed byte offset of the first sequence byte
    line_bases: int            # bases per full line (the first sequence line)
    line_bytes: int            # bytes per full line, newline included
    ragged_line: int | None    # first line that breaks the fixed-width layout, if any
    length: int = 0            # bases in the record (also when ``seq`` is not kept)


def _decode_header(raw: bytes, path: Path, lineno: int) -> tuple[str, str]:
    try:
        text = raw[1:].decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise FastaCharacterError(f"header is not valid UTF-8 (byte 0x{raw[1 + err.start]:02x} at "
                                  f"column {err.start + 2})", path=path, line=lineno) from None
    if not text:
        raise FastaFormatError("header has no id (nothing after '>')", path=path, line=lineno)
    parts = text.split(None, 1)
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def _looks_binary(head: bytes) -> bool:
    """NUL bytes, or a start that is neither '>' nor mostly printable text."""
    if b"\x00" in head:
        return True
    if head[:1] == b">" or not head:
        return False
    arr = np.frombuffer(head, dtype=np.uint8)
    text = ((arr >= 32) & (arr < 127)) | (arr == 9) | (arr == 10) | (arr == 13)
    return text.mean() < 0.9


def _line_of(rec: _Raw, pos0: int) -> tuple[int, int]:
    """File line (1-based) and column (1-based) of 0-based sequence position ``pos0``."""
    ends = np.cumsum(rec.line_lengths)
    k = int(np.searchsorted(ends, pos0, side="right"))
    start = int(ends[k - 1]) if k else 0
    return rec.line + 1 + k, pos0 - start + 1


def _char_name(b: int) -> str:
    if 32 < b < 127:
        return f"'{chr(b)}'"
    return {32: "space ' '", 9: "tab"}.get(b, f"byte 0x{b:02x}")


def _validate_bytes(rec: _Raw, path: Path, alphabet: str | None, data: bytes | None = None,
                    base: int = 0) -> None:
    """Non-ASCII, control bytes and (optionally) the alphabet, vectorised over the record.

    ``data`` is a piece of the record starting at 0-based position ``base`` (default: all of
    ``rec.seq``), so a record can be checked piece by piece without holding it whole.
    """
    arr = np.frombuffer(rec.seq if data is None else data, dtype=np.uint8)
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 32 or hi >= 127:
        bad = (arr >= 127) | ((arr < 32) & (arr != 9))
        if bad.any():
            pos0 = int(np.argmax(bad))
            b = int(arr[pos0])
            pos0 += base
            line, col = _line_of(rec, pos0)
            if b >= 128:
                msg = f"non-ASCII byte 0x{b:02x} in the sequence (column {col})"
            else:
                msg = f"control byte 0x{b:02x} in the sequence (column {col}): binary data, not FASTA"
            raise FastaCharacterError(msg, path=path, record=rec.id, line=line, position=pos0 + 1)
    if alphabet is not None:
        ok = _ALPHABET_LUT[alphabet][arr]
        if not ok.all():
            pos0 = int(np.argmin(ok))
            char = int(arr[pos0])
            pos0 += base
            line, col = _line_of(rec, pos0)
            raise FastaCharacterError(
                f"invalid character {_char_name(char)} for {alphabet.upper()} (column {col}); "
                f"allowed: {ALPHABETS[alphabet]} in either case", path=path, record=rec.id, line=line,
                position=pos0 + 1)


def _scan(path: Path, *, allow_duplicates: bool = False, skip_empty: bool = False,
          alphabet: str | None = None, keep_empty: bool = False, keep_seq: bool = True) -> Iterator[_Raw]:
    """Yield validated raw records; the single line loop behind :func:`read_fasta` and the index.

    With ``keep_seq=False`` (index building) each record is validated in pieces of a few MB and its
    sequence is not kept (``seq`` is empty, ``length`` is set), so memory does not grow with the
    length of a chromosome.
    """
    if alphabet is not None and alphabet not in ALPHABETS:
        raise ValueError(f"alphabet must be one of {sorted(ALPHABETS)} or None, got {alphabet!r}")
    compression = detect_compression(path)
    if path.stat().st_size == 0:
        raise FastaFormatError("empty file (no FASTA records)", path=path)

    seen: dict[str, int] = {}
    lineno = 0
    offset = 0
    cur: _Raw | None = None
    parts: list[bytes] = []
    nrecords = 0
    # fixed-width bookkeeping of the current record
    pending_short: int | None = None  # a line shorter than the first (or blank) seen; next seq line -> ragged

    def flush(rec: _Raw) -> None:
        """Validate the pending pieces of ``rec`` and drop them (``keep_seq=False``)."""
        data = b"".join(parts)
        _validate_bytes(rec, path, alphabet, data=data, base=rec.length)
        rec.length += len(data)
        parts.clear()

    def finish(rec: _Raw) -> _Raw | None:
        if keep_seq:
            rec.seq = b"".join(parts)
            rec.length = len(rec.seq)
        else:
            flush(rec)
        if not rec.length:
            if keep_empty:
                return rec
            if skip_empty:
                return None
            raise FastaFormatError("empty record (a header with no sequence lines)", path=path,
                                   record=rec.id, line=rec.line, remedy="skip_empty")
        if keep_seq:
            _validate_bytes(rec, path, alphabet)
        return rec

    try:
        with _open_binary(path, compression) as fh:
            first = True
            for raw in fh:
                lineno += 1
                nbytes = len(raw)
                line = raw.rstrip(b"\n")
                if first:
                    first = False
                    if line.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (Windows editors)
                        line = line[3:]
                    if _looks_binary(line[:4096]):
                        raise FastaFormatError("binary data, not a FASTA file", path=path, line=1)
                if line.endswith(b"\r"):
                    line = line[:-1]
                if b"\r" in line:
                    rid = cur.id if cur else None
                    if line[:1] == b">":
                        rid = (line.split(b"\r")[0][1:].decode("utf-8", "replace").split() or [rid])[0]
                    raise FastaFormatError("old Mac line endings (CR only); convert them to LF, e.g. "
                                           "`tr '\\r' '\\n'`", path=path, line=lineno, record=rid)
                if line[:1] == b">":
                    if cur is not None:
                        done = finish(cur)
                        if done is not None:
                            yield done
                    rid, desc = _decode_header(line, path, lineno)
                    if not allow_duplicates:
                        if rid in seen:
                            raise FastaDuplicateError(
                                f"duplicate record id (first seen at line {seen[rid]})",
                                path=path, record=rid, line=lineno, remedy="allow_duplicates")
                        seen[rid] = lineno
                    cur = _Raw(rid, desc, lineno, b"", [], offset + nbytes, 0, 0, None)
                    parts = []
                    pending_short = None
                    nrecords += 1
                else:
                    seq = line.rstrip(b" \t")
                    n = len(seq)
                    if cur is None:
                        if n == 0:
                            offset += nbytes
                            continue
                        raise FastaFormatError(
                            "text before the first '>' header (is this a FASTA file?): "
                            f"{line[:40].decode('latin-1')!r}", path=path, line=lineno)
                    cur.line_lengths.append(n)
                    ends_nl = raw.endswith(b"\n")
                    eol = cur.line_bytes - cur.line_bases  # newline bytes of the first line
                    if n != len(line) and cur.ragged_line is None:
                        cur.ragged_line = lineno  # trailing whitespace: the byte layout is not fixed
                    if n:
                        parts.append(seq)
                        if not keep_seq and len(parts) >= 65536:
                            flush(cur)
                        if cur.line_bases == 0:
                            cur.line_bases = n
                            cur.line_bytes = nbytes if ends_nl else n + 1
                        elif cur.ragged_line is None:
                            if pending_short is not None:
                                cur.ragged_line = pending_short
                            elif n > cur.line_bases or (ends_nl and nbytes - n != eol):
                                cur.ragged_line = lineno
                        if n < cur.line_bases and pending_short is None and ends_nl:
                            pending_short = lineno
                    elif pending_short is None:
                        pending_short = lineno
                offset += nbytes
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        what = "truncated gzip stream (the file ends before the end-of-stream marker)" \
            if isinstance(err, EOFError) else f"corrupt gzip data ({err})"
        raise FastaCompressionError(f"{what}, after line {lineno}", path=path,
                                    record=cur.id if cur else None, line=lineno) from None
    if cur is not None:
        done = finish(cur)
        if done is not None:
            yield done
    if nrecords == 0:
        raise FastaFormatError("empty file (no FASTA records)", path=path)


# ----------------------------------------------------------------------------------------------
# streaming


def read_fasta(path: str | os.PathLike, *, allow_duplicates: bool = False, alphabet: str | None = None,
               skip_empty: bool = False, as_bytes: bool = False) -> Iterator[FastaRecord]:
    """Stream the records of a plain, gzip or BGZF FASTA file, validating as it goes.

    Args:
        path: the FASTA file; compression is detected from its first bytes.
        allow_duplicates: accept repeated record ids (by default a :class:`FastaDuplicateError`;
            the check keeps a dict of every id seen, so set this for corpora of 10^8 records).
        alphabet: ``None`` (accept any printable ASCII), ``"dna"`` or ``"protein"`` (see
            :data:`ALPHABETS`): any other character raises :class:`FastaCharacterError` naming the
            record, line and position.
        skip_empty: drop records with no sequence instead of raising :class:`FastaFormatError`.
        as_bytes: yield ``seq`` as ASCII ``bytes`` (what the tokenizers and numpy want) instead of str.

    Yields:
        :class:`FastaRecord` in file order. Errors are raised lazily, when the bad line is reached.
    """
    path = Path(path)
    for raw in _scan(path, allow_duplicates=allow_duplicates, skip_empty=skip_empty, alphabet=alphabet):
        seq = raw.seq if as_bytes else raw.seq.decode("ascii")
        yield FastaRecord(raw.id, raw.description, seq, raw.line)


# ----------------------------------------------------------------------------------------------
# the index


def cache_root() -> Path:
    """bioseq's cache directory: $BIOSEQ_CACHE, else $XDG_CACHE_HOME/bioseq or ~/.cache/bioseq."""
    if os.environ.get("BIOSEQ_CACHE"):
        return Path(os.environ["BIOSEQ_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bioseq"


def _dir_is_writable(directory: Path) -> bool:
    """Writable by permission bits (root is not exempt: 0555 data stays untouched) and by access."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(directory, os.W_OK)


def _is_fresh(index: Path, fasta: Path) -> bool:
    try:
        return index.stat().st_mtime >= fasta.stat().st_mtime and index.stat().st_size > 0
    except OSError:
        return False


def _cache_dir_for(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_root() / "fai" / key


def _index_paths(path: Path, compression: str) -> tuple[Path, Path | None, bool]:
    """Where the ``.fai``/``.gzi`` live, and whether they must be (re)built."""
    want_gzi = compression == "bgzf"
    fai, gzi = Path(f"{path}.fai"), (Path(f"{path}.gzi") if want_gzi else None)
    if _is_fresh(fai, path) and (gzi is None or _is_fresh(gzi, path)):
        return fai, gzi, False
    if _dir_is_writable(path.parent):
        return fai, gzi, True
    cache = _cache_dir_for(path)
    fai, gzi = cache / (path.name + ".fai"), (cache / (path.name + ".gzi") if want_gzi else None)
    fresh = fai.exists() and (gzi is None or gzi.exists())
    return fai, gzi, not fresh


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _build_fai(path: Path) -> bytes:
    """The ``.fai`` text; empty records are kept with length 0 (samtools layout)."""
    lines = []
    for rec in _scan(path, allow_duplicates=False, keep_empty=True, keep_seq=False):
        if rec.ragged_line is not None:
            raise FastaIndexError(
                f"ragged line lengths: this line breaks the record's fixed layout ({rec.line_bases} bases "
                "per line, same line ending, no trailing blanks; only the last line may be shorter), so "
                "the file cannot be indexed for random access; rewrap it (e.g. `seqkit seq -w 60`) or "
                "stream it with read_fasta", path=path, record=rec.id, line=rec.ragged_line)
        lines.append(f"{rec.id}\t{rec.length}\t{rec.offset}\t{rec.line_bases}\t{rec.line_bytes}\n")
    return "".join(lines).encode()


def _build_gzi(path: Path) -> bytes:
    """htslib ``.gzi``: uint64 count, then (compressed, uncompressed) uint64 offsets of each block
    after the first, the empty EOF block excluded."""
    from Bio import bgzf

    with open(path, "rb") as fh:
        blocks = [(start, data_start) for start, _, data_start, data_len in bgzf.BgzfBlocks(fh) if data_len]
    entries = blocks[1:]
    return struct.pack("<Q", len(entries)) + b"".join(struct.pack("<QQ", c, u) for c, u in entries)


def ensure_index(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Build the ``.fai`` (and ``.gzi`` for BGZF) for ``path`` unless a fresh one exists.

    Returns ``(fai_path, gzi_path_or_None)``. Runs the full validation of :func:`read_fasta`
    plus the fixed-line-width check; duplicate ids are always an error here. Empty records are
    written with length 0 (as samtools does) and filtered by :class:`IndexedFasta`. Safe to call
    from several processes at once (atomic rename). Plain gzip raises
    :class:`FastaCompressionError`: random access needs BGZF.
    """
    path = Path(path)
    compression = detect_compression(path)
    if compression == "gzip":
        raise FastaCompressionError(
            "plain gzip cannot be indexed for random access: compress with bgzip or decompress "
            f"(e.g. `gunzip -c {path.name} | bgzip > {path.stem}.bgz`)", path=path)
    fai, gzi, build = _index_paths(path, compression)
    if build:
        data = _build_fai(path)
        try:
            _write_index(path, fai, gzi, data)
        except OSError:
            cache = _cache_dir_for(path)  # the directory looked writable but is not (read-only mount)
            fai, gzi = cache / (path.name + ".fai"), (cache / (path.name + ".gzi") if gzi else None)
            try:
                _write_index(path, fai, gzi, data)
            except OSError as err:
                raise FastaIndexError(f"cannot write the index to {fai.parent} ({err.strerror}); set "
                                      "BIOSEQ_CACHE to a writable directory", path=path) from None
    return fai, gzi


def _write_index(path: Path, fai: Path, gzi: Path | None, fai_data: bytes) -> None:
    if gzi is not None:
        _atomic_write(gzi, _build_gzi(path))
    _atomic_write(fai, fai_data)  # written last: its presence means the pair is complete


def _read_fai(fai: Path, path: Path) -> list[tuple[str, int]]:
    out = []
    with open(fai, encoding="utf-8") as fh:
        for i, text in enumerate(fh, 1):
            fields = text.rstrip("\n").split("\t")
            if len(fields) < 5:
                raise FastaIndexError(f"malformed index {fai} at line {i}; delete it to rebuild", path=path)
            out.append((fields[0], int(fields[1])))
    return out


class IndexedFasta:
    """Random access to windows of a plain or BGZF FASTA (pyfaidx underneath).

    ``names``: record ids in file order; ``lengths``: id -> length in bases. Building the index is
    :func:`ensure_index` (called here; cheap when a fresh index exists). The pyfaidx handle is opened
    on first :meth:`fetch` and reopened when ``os.getpid()`` changes, and is dropped on pickling,
    so one object can be shared with DataLoader workers (fork or spawn).

    Args:
        path: plain or BGZF FASTA (plain gzip raises :class:`FastaCompressionError`).
        skip_empty: leave zero-length records out of ``names``/``lengths`` instead of raising
            :class:`FastaFormatError`.
    """

    def __init__(self, path: str | os.PathLike, *, skip_empty: bool = False):
        self.path = Path(path)
        self.compression = detect_compression(self.path)
        self.fai_path, self.gzi_path = ensure_index(self.path)
        entries = _read_fai(self.fai_path, self.path)
        empty = [name for name, n in entries if n == 0]
        if empty and not skip_empty:
            raise FastaFormatError("empty record (a header with no sequence lines)", path=self.path,
                                   record=empty[0], remedy="skip_empty")
        self.names: list[str] = [name for name, n in entries if n > 0]
        self.lengths: dict[str, int] = {name: n for name, n in entries if n > 0}
        self._faidx = None
        self._pid: int | None = None

    ensure_index = staticmethod(ensure_index)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.lengths

    def __repr__(self) -> str:
        return f"IndexedFasta({str(self.path)!r}, records={len(self.names)})"

    def _pyfaidx_source(self) -> Path:
        """pyfaidx picks BGZF by the ``.gz``/``.bgz`` suffix; give it a symlink whose suffix agrees
        with the magic bytes when the real name does not."""
        bgzf = self.compression == "bgzf"
        if self.path.name.lower().endswith((".gz", ".bgz")) == bgzf:
            return self.path
        link = _cache_dir_for(self.path) / f"{self.path.name}.{'gz' if bgzf else 'fa'}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            tmp = link.with_name(f"{link.name}.{os.getpid()}.tmp")
            os.symlink(self.path.resolve(), tmp)
            os.replace(tmp, link)
        return link

    def _handle(self):
        if self._faidx is None or self._pid != os.getpid():
            import pyfaidx

            kwargs = {"gzi_indexname": str(self.gzi_path)} if self.gzi_path is not None else {}
            self._faidx = pyfaidx.Faidx(str(self._pyfaidx_source()), indexname=str(self.fai_path),
                                        as_raw=True, strict_bounds=True, rebuild=False, build_index=False,
                                        **kwargs)
            self._pid = os.getpid()
        return self._faidx

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> str:
        """Bases ``[start, end)`` (0-based, half-open) of record ``name``, case as in the file.

        ``end=None`` means the record's end. Out-of-range coordinates raise
        :class:`FastaIndexError` (no clipping, no padding).
        """
        if name not in self.lengths:
            raise FastaIndexError("no such record in the index", path=self.path, record=name)
        n = self.lengths[name]
        end = n if end is None else end
        if not 0 <= start <= end <= n:
            raise FastaIndexError(f"window [{start}, {end}) is outside the record (length {n})",
                                  path=self.path, record=name)
        if start == end:
            return ""
        seq = self._handle().fetch(name, start + 1, end)
        seq = seq if isinstance(seq, str) else str(seq)
        if len(seq) != end - start:
            raise FastaIndexError(f"read {len(seq)} bases for window [{start}, {end}); the file changed "
                                  f"after indexing? delete {self.fai_path} to rebuild",
                                  path=self.path, record=name)
        return seq

    def close(self) -> None:
        if self._faidx is not None and self._pid == os.getpid():
            self._faidx.close()
        self._faidx = None
        self._pid = None

    def __enter__(self) -> IndexedFasta:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_faidx"] = None
        state["_pid"] = None
        return state
