"""Tokenizers for DNA, protein and SMILES.

Every tokenizer shares one id layout, stable forever (checkpoints depend on it)::

    [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6, then the symbols

DNA symbols are ``A7 C8 G9 T10 N11`` (vocab 12), identical to HyenaDNA and Caduceus, so their
released checkpoints load unchanged. EOS is ``[SEP]`` (``eos_id == sep_id == 1``); whether it is
added is always an explicit argument.

DNA and protein are one character per token. ``encode`` never loops over characters in Python:
the sequence becomes bytes and goes through a 256-entry lookup table in C. Short inputs (and the
gap-stripping / [UNK]-counting modes) use ``bytes.translate`` plus a memchr scan for the
invalid-byte markers, then numpy widens to int64; long inputs are read as little-endian uint16
pairs and gathered from the same table expanded to [65536, 2] int64 (one ``np.take`` per 256 KiB
chunk, straight into the output, checked with a max while in cache). About 1.5 GB/s of DNA text on
one core; see ``benchmarks/tokenizer_speed.py``. Lowercase (soft-masked repeats) is folded to uppercase.

DNA handling of non-ACGTN letters (upper or lower case):

* IUPAC ambiguity codes ``R Y S W K M B D H V`` map to ``N`` by default (``iupac="n"``);
  ``iupac="unk"`` maps them to ``[UNK]``, ``iupac="error"`` raises.
* RNA ``U`` maps to ``T`` by default (``u_to_t=True``); with ``u_to_t=False`` it is an unknown
  character.
* Anything else (gaps, digits, whitespace, non-ASCII) raises :class:`TokenizerError` naming the
  path, record and 1-based position and the character, or maps to ``[UNK]`` with
  ``unknown="unk"``.

Protein: the 20 standard amino acids, ``X B Z U O``, the stop ``*`` and the alignment gaps ``-``
and ``.`` (``strip_gaps=True`` drops gaps). Lowercase is folded like DNA; note that in A2M/A3M
alignments lowercase letters mean insert states: that distinction belongs to an alignment reader,
not to this tokenizer.

SMILES: regex atom-level tokens (bracket atoms such as ``[nH+]`` ``[C@@H]``, two-letter ``Cl`` and
``Br``, aromatic atoms, ring bonds ``1``..``9`` and ``%NN``, bonds, branches, ``.``, ``*``, ``>``)
with a vocabulary built from data (:meth:`SmilesTokenizer.build`) and saved as JSON next to the
model. Surrounding whitespace is stripped. A character outside the grammar is still a token (the
tokens always join back to the stripped input) and encodes as ``[UNK]``. Unknown tokens are never
dropped: they become ``[UNK]``, are counted in ``unk_count`` and warned about once per tokenizer.

Counters such as ``unk_count`` are per process: DataLoader workers count in their own copy.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioseq.alphabets import (
    DNA_COMPLEMENT,
    DNA_IUPAC,
    DNA_SYMBOLS,
    PROTEIN_GAPS,
    PROTEIN_STANDARD,
    PROTEIN_TOKEN_SYMBOLS,
)
from bioseq.errors import BioseqError, locate

__all__ = [
    "SPECIAL_TOKENS",
    "TokenizerError",
    "DnaTokenizer",
    "ProteinTokenizer",
    "ProtXLSTMTokenizer",
    "SmilesTokenizer",
    "get_tokenizer",
    "tokenizer_from_config",
    "load_tokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
NUM_SPECIAL = len(SPECIAL_TOKENS)
FORMAT_VERSION = 1

_INVALID = 255  # lookup-table marker: a byte that is not allowed
_AMBIGUOUS = 254  # lookup-table marker: an IUPAC code when iupac="error"

PROTEIN_SYMBOLS = PROTEIN_TOKEN_SYMBOLS


class TokenizerError(BioseqError):
    """A sequence (or a tokenizer file) the tokenizer cannot accept; the message is one line.

    Attributes ``path``, ``record``, ``position`` (1-based) and ``char`` are set where known.
    """

    def __init__(self, message: str, *, path: object = None, record: object = None,
                 position: int | None = None, char: str | None = None):
        super().__init__(message)
        self.path = path
        self.record = record
        self.position = position
        self.char = char


def _caller_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` made by the caller of this function that points at
    the first frame outside this module (the user's code)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _where(path: object, record: object, position: int | None) -> str:
    where = locate(path, record, None, position)
    return f"{where}: " if where else ""


def _as_numpy_ids(ids: Any) -> np.ndarray:
    """Ids from a list, numpy array or (any-device) tensor as an int64 numpy array."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return arr.astype(np.int64)
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class BaseTokenizer:
    """What every tokenizer shares: the special ids, decoding, batching and JSON round trips.

    Subclasses set ``name`` and ``vocab`` and implement ``_encode_body``, which returns the int64
    ids of the sequence without specials.
    """

    name: str = ""
    cls_id = CLS_ID
    sep_id = SEP_ID
    eos_id = SEP_ID
    bos_id = BOS_ID
    mask_id = MASK_ID
    pad_id = PAD_ID
    reserved_id = RESERVED_ID
    unk_id = UNK_ID
    special_tokens = SPECIAL_TOKENS

    vocab: list[str]

    def __init__(self) -> None:
        self.unk_count = 0  # unknown tokens/characters mapped to [UNK] so far (this process)
        self._warned = False

    # ----------------------------------------------------------------------------- vocabulary
    @property
    def alphabet(self) -> str:
        """What the ids spell: ``"dna"``, ``"protein"`` or ``"smiles"`` (a model config's ``alphabet``)."""
        return self.name

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> list[int]:
        return list(range(NUM_SPECIAL))

    @property
    def symbol_ids(self) -> torch.Tensor:
        """LongTensor of the ids of real residue/atom tokens (the MLM random-replacement pool)."""
        return torch.arange(NUM_SPECIAL, self.vocab_size, dtype=torch.long)

    def token_to_id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the {self.name} vocabulary") from None

    def id_to_token(self, idx: int) -> str:
        return self.vocab[int(idx)]

    @property
    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {tok: i for i, tok in enumerate(self.vocab)}
            self.__dict__["_index_cache"] = index
        return index

    # ----------------------------------------------------------------------------- encoding
    def _encode_body(self, seq: Any, path: object, record: object, offset: int,
                     lead: int = 0, trail: int = 0) -> np.ndarray:
        """int64 ids of ``seq`` without specials, with ``lead``/``trail`` unset slots around them."""
        raise NotImplementedError

    def _note_unknown(self, count: int, example: str, path: object, record: object,
                      position: int | None) -> None:
        """Count ``count`` items mapped to [UNK]; warn once per tokenizer instance."""
        if count <= 0:
            return
        self.unk_count += count
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: {_where(path, record, position)}{example!r} is not in the "
                f"{self.name} vocabulary and was encoded as [UNK]; later ones are only counted "
                f"(tokenizer.unk_count)",
                stacklevel=_caller_stacklevel(),
            )

    def encode(self, seq: str | bytes, *, add_eos: bool = False, add_cls: bool = False,
               path: object = None, record: object = None, offset: int = 0) -> np.ndarray:
        """Token ids of one sequence: int64 array of shape [add_cls + n_tokens + add_eos].

        ``path``/``record`` name the source in error messages; ``offset`` is added to reported
        positions (e.g. a window's start inside its chromosome). Positions are 1-based.
        """
        out = self._encode_body(seq, path, record, offset, int(add_cls), int(add_eos))
        if add_cls:
            out[0] = self.cls_id
        if add_eos:
            out[-1] = self.eos_id
        return out

    def __call__(self, seq: str | bytes, **kwargs: Any) -> np.ndarray:
        return self.encode(seq, **kwargs)

    def _truncated_body(self, seq: Any, max_body: int | None, path: object, record: object) -> np.ndarray:
        body = self._encode_body(seq, path, record, 0)
        return body if max_body is None else body[:max_body]

    def _batch_bodies(self, seqs: Sequence[Any], max_body: int | None, names: Sequence[object] | None,
                      path: object) -> tuple[np.ndarray, np.ndarray]:
        """All bodies (no specials) concatenated, and the length of each: (int64[sum], int64[B])."""
        bodies = [self._truncated_body(s, max_body, path, names[i] if names is not None else i)
                  for i, s in enumerate(seqs)]
        body_len = np.fromiter((len(b) for b in bodies), dtype=np.int64, count=len(bodies))
        flat = np.concatenate(bodies) if bodies else np.zeros(0, dtype=np.int64)
        return flat, body_len

    def batch_encode(self, seqs: Sequence[str | bytes], *, max_length: int | None = None,
                     add_eos: bool = False, add_cls: bool = False, padding: str = "longest",
                     pad_to_multiple_of: int | None = None, names: Sequence[object] | None = None,
                     path: object = None) -> dict[str, torch.Tensor]:
        """Encode and right-pad a batch.

        Returns ``input_ids`` LongTensor[B, L] padded with ``pad_id`` and ``attention_mask``
        BoolTensor[B, L] (True = real token, including [CLS]/[SEP]). ``max_length`` truncates
        each sequence so that it fits together with its specials (the specials are kept);
        ``padding="longest"`` pads to the longest row, ``"max_length"`` to ``max_length``;
        ``pad_to_multiple_of`` rounds L up. ``names`` (one per sequence) name records in errors,
        otherwise the 0-based batch index is used.
        """
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        n_special = int(add_cls) + int(add_eos)
        max_body = None
        if max_length is not None:
            max_body = max_length - n_special
            if max_body < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        if names is not None and len(names) != len(seqs):
            raise ValueError(f"{len(names)} names for {len(seqs)} sequences")
        flat, body_len = self._batch_bodies(seqs, max_body, names, path)
        batch = len(body_len)
        lengths = body_len + n_special
        width = int(lengths.max()) if batch else 0
        if padding == "max_length":
            width = max(width, int(max_length))
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        pos = np.arange(width)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        start = int(add_cls)
        body_mask = (pos >= start) & (pos < (start + body_len)[:, None])
        ids[body_mask] = flat  # row-major order of the mask = order of the concatenated bodies
        if add_cls:
            ids[:, 0] = self.cls_id
        if add_eos:
            ids[np.arange(batch), start + body_len] = self.eos_id
        mask = pos < lengths[:, None]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    # ----------------------------------------------------------------------------- decoding
    def _check_ids(self, arr: np.ndarray) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)].flat[0]
            raise TokenizerError(f"token id {int(bad)} is outside the {self.name} vocabulary "
                                 f"(0..{self.vocab_size - 1})")

    def decode(self, ids: Any, *, skip_special_tokens: bool = True) -> str:
        """The text of a 1-D id sequence (list, numpy or tensor).

        ``skip_special_tokens=True`` drops every special token ([CLS] [SEP] [BOS] [MASK] [PAD]
        [RESERVED] [UNK]); ``False`` shows each as its bracketed name.
        """
        arr = _as_numpy_ids(ids)
        if arr.ndim != 1:
            raise ValueError(f"decode takes a 1-D id sequence, got shape {tuple(arr.shape)}; "
                             f"use batch_decode")
        if arr.size == 0:
            return ""
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= self.vocab_size:
            self._check_ids(arr)  # raises, naming the bad id
        if skip_special_tokens:
            arr = self._without_specials(arr, low)
        return self._decode_checked(arr)

    def _without_specials(self, arr: np.ndarray, low: int) -> np.ndarray:
        """``arr`` (smallest id ``low``) without the special-token ids: here the first ``NUM_SPECIAL``."""
        return arr[arr >= NUM_SPECIAL] if low < NUM_SPECIAL else arr

    def _decode_checked(self, arr: np.ndarray) -> str:
        table = self.__dict__.get("_vocab_array")
        if table is None:
            table = np.array(self.vocab, dtype=object)
            self.__dict__["_vocab_array"] = table
        return "".join(table[arr].tolist())

    def batch_decode(self, input_ids: Any, attention_mask: Any = None, *,
                     skip_special_tokens: bool = True) -> list[str]:
        """Decode each row of ``input_ids`` [B, L], keeping only positions where the mask is True."""
        arr = _as_numpy_ids(input_ids)
        if arr.ndim != 2:
            raise ValueError(f"batch_decode takes [B, L] ids, got shape {tuple(arr.shape)}")
        if isinstance(attention_mask, torch.Tensor):
            attention_mask = attention_mask.detach().cpu().numpy()
        mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
        return [self.decode(row if mask is None else row[mask[i]], skip_special_tokens=skip_special_tokens)
                for i, row in enumerate(arr)]

    # ----------------------------------------------------------------------------- serialisation
    def _options(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: ``{"name", "version", "vocab", "options"}``."""
        return {"name": self.name, "version": FORMAT_VERSION, "vocab": list(self.vocab),
                "options": self._options()}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BaseTokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output (called on the base class, dispatches)."""
        name = config.get("name")
        target = _REGISTRY.get(str(name).lower()) if name is not None else None
        if target is None:
            raise TokenizerError(f"tokenizer config has unknown name {name!r} "
                                 f"(expected one of {sorted(_REGISTRY)})")
        if cls is not BaseTokenizer and not issubclass(target, cls):
            raise TokenizerError(f"tokenizer config is for {name!r}, not {cls.name!r}")
        version = config.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise TokenizerError(f"tokenizer config version {version!r} is newer than this bioseq "
                                 f"understands ({FORMAT_VERSION})")
        return target._from_dict(config)

    @classmethod
    def _construct(cls, *args: Any, **options: Any) -> BaseTokenizer:
        """``cls(*args, **options)`` with bad options reported as a one-line TokenizerError."""
        try:
            return cls(*args, **options)
        except (TypeError, ValueError) as exc:
            raise TokenizerError(f"bad {cls.name} tokenizer options {options}: {exc}") from None

    @classmethod
    def _from_dict(cls, config: dict[str, Any]) -> BaseTokenizer:
        tok = cls._construct(**config.get("options", {}))
        vocab = config.get("vocab")
        if vocab is not None and list(vocab) != list(tok.vocab):
            raise TokenizerError(f"tokenizer config vocabulary differs from the built-in {cls.name} "
                                 f"vocabulary (ids are fixed; {len(vocab)} vs {tok.vocab_size} tokens)")
        return tok

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON (``tokenizer.json`` next to a model, by convention)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BaseTokenizer:
        """Read a JSON file written by :meth:`save`."""
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{path}: cannot read tokenizer file ({exc.__class__.__name__}: "
                                 f"{exc})", path=path) from None
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", path=path) from None
        if not isinstance(config, dict):
            raise TokenizerError(f"{path}: a tokenizer file holds a JSON object", path=path)
        try:
            return cls.from_dict(config)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}", path=path) from None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}(vocab_size={self.vocab_size}{', ' if opts else ''}{opts})"


class _CharTokenizer(BaseTokenizer):
    """One character = one token, encoded through a 256-entry byte lookup table."""

    symbols: str = ""
    _kind: str = ""  # "DNA" / "protein", for messages
    _allowed_text: str = ""

    def __init__(self, *, unknown: str = "error") -> None:
        super().__init__()
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        self.vocab = list(SPECIAL_TOKENS) + list(self.symbols)
        table = np.full(256, _INVALID if unknown == "error" else UNK_ID, dtype=np.uint8)
        for i, ch in enumerate(self.symbols):
            self._map(table, ch, NUM_SPECIAL + i)
        self._extend_table(table)
        self._table = table.tobytes()
        self._has_unk = bool((table == UNK_ID).any())
        decode = np.zeros(self.vocab_size, dtype=np.uint8)
        decode[NUM_SPECIAL:] = np.frombuffer(self.symbols.encode("ascii"), dtype=np.uint8)
        self._decode_table = decode
        self._strip_ids: bytes = b""

    @staticmethod
    def _map(table: np.ndarray, ch: str, value: int) -> None:
        """Map ``ch`` and its other case to ``value``."""
        table[ord(ch.upper())] = value
        table[ord(ch.lower())] = value

    def _extend_table(self, table: np.ndarray) -> None:
        """Hook for extra mappings (IUPAC codes, U)."""

    _CHUNK = 1 << 18  # characters per pass: the chunk's ids are checked while still in cache
    _SMALL = 1 << 14  # below this many characters the translate path has less overhead

    def _encode_body(self, seq: Any, path: object, record: object, offset: int,
                     lead: int = 0, trail: int = 0) -> np.ndarray:
        text = None  # the str, when non-ASCII characters were replaced (for the warning's example)
        if isinstance(seq, str):
            try:
                data = seq.encode("ascii")
            except UnicodeEncodeError as exc:
                if self.unknown == "error":
                    self._raise_invalid(seq[exc.start], exc.start, path, record, offset)
                data = seq.encode("ascii", errors="replace")  # one '?' per character: positions kept
                text = seq
        elif isinstance(seq, (bytes, bytearray)):
            data = seq
        elif isinstance(seq, memoryview):
            data = seq.tobytes()
        else:
            raise TypeError(f"{type(self).__name__}.encode takes str or bytes, got {type(seq).__name__}")
        n = len(data)
        chunk = self._CHUNK
        if n < self._SMALL or self._strip_ids or self._has_unk:
            # short input (least per-call overhead), gaps to drop or [UNK]s to count:
            # bytes.translate, then widen
            if n <= chunk:
                ids = self._translate(data, path, record, offset, text)
            else:
                ids = b"".join([self._translate(data[i:i + chunk], path, record, offset + i,
                                                text and text[i:i + chunk])
                                for i in range(0, n, chunk)])
            codes = np.frombuffer(ids, dtype=np.uint8)
            if not lead and not trail:
                return codes.astype(np.int64)
            out = np.empty(lead + len(ids) + trail, dtype=np.int64)
            out[lead:lead + len(ids)] = codes
            return out
        # Fast path: read the bytes as little-endian uint16 and gather both ids at once from a
        # [65536, 2] int64 table straight into the output (one C gather, already widened);
        # invalid bytes hold markers >= 254, found by a max over the chunk while it is in cache.
        # mode="clip" only avoids numpy buffering `out` (a uint16 index is always in range).
        pairs = self._pairs
        out = np.empty(lead + n + trail, dtype=np.int64)
        for i in range(0, n - 1, chunk):
            half = min(chunk, n - i) // 2
            body = out[lead + i:lead + i + 2 * half]
            pairs.take(np.frombuffer(data, dtype="<u2", count=half, offset=i), axis=0,
                       out=body.reshape(half, 2), mode="clip")
            if body.max() >= _AMBIGUOUS:
                self._translate(data[i:i + 2 * half], path, record, offset + i)  # raises, naming it
        if n % 2:
            last = self._table[data[n - 1]]
            if last >= _AMBIGUOUS:
                self._translate(data[n - 1:], path, record, offset + n - 1)  # raises
            out[lead + n - 1] = last
        return out

    @property
    def _pairs(self) -> np.ndarray:
        """[65536, 2] int64 table: the ids of the two bytes of each little-endian uint16 (lazy)."""
        pairs = self.__dict__.get("_pairs_cache")
        if pairs is None:
            table = np.frombuffer(self._table, dtype=np.uint8).astype(np.int64)
            both = np.arange(65536)
            pairs = np.stack([table[both & 255], table[both >> 8]], axis=1)
            self.__dict__["_pairs_cache"] = pairs
        return pairs

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_pairs_cache", None)  # 1 MiB, rebuilt on first use (e.g. in a DataLoader worker)
        return state

    def _translate(self, data: bytes | bytearray, path: object, record: object, offset: int,
                   text: str | None = None) -> bytes:
        """One C pass through the byte table, then a memchr scan for the invalid markers."""
        ids = data.translate(self._table)
        if ids.find(_INVALID) >= 0 or ids.find(_AMBIGUOUS) >= 0:
            codes = np.frombuffer(ids, dtype=np.uint8)
            first = int(np.flatnonzero(codes >= _AMBIGUOUS)[0])
            self._raise_invalid(chr(data[first]), first, path, record, offset,
                                ambiguous=codes[first] == _AMBIGUOUS)
        if self._has_unk:
            n_unk = ids.count(self.unk_id)
            if n_unk:
                first = ids.find(self.unk_id)
                example = text[first] if text else chr(data[first])
                self._note_unknown(n_unk, example, path, record, offset + first + 1)
        if self._strip_ids:
            ids = ids.translate(None, self._strip_ids)
        return ids

    def _raise_invalid(self, char: str, index: int, path: object, record: object, offset: int,
                       ambiguous: bool = False) -> None:
        position = offset + index + 1
        shown = repr(char)
        if ord(char) > 127 or not char.isprintable():
            shown += f" (U+{ord(char):04X})"
        if ambiguous:
            msg = (f"{_where(path, record, position)}IUPAC ambiguity code {shown} not allowed "
                   f"(iupac='error'; iupac='n' maps it to N)")
        else:
            msg = (f"{_where(path, record, position)}invalid {self._kind} character {shown}; allowed: "
                   f"{self._allowed_text} (unknown='unk' maps it to [UNK])")
        raise TokenizerError(msg, path=path, record=record, position=position, char=char)

    def _truncated_body(self, seq: Any, max_body: int | None, path: object, record: object) -> np.ndarray:
        if max_body is not None and not self._strip_ids and not isinstance(seq, memoryview):
            seq = seq[:max_body]  # one character per token: cut before encoding
        return super()._truncated_body(seq, max_body, path, record)

    def _batch_bodies(self, seqs: Sequence[Any], max_body: int | None, names: Sequence[object] | None,
                      path: object) -> tuple[np.ndarray, np.ndarray]:
        # Many short records (proteins, benchmark rows): join them and encode once, so the per-call
        # overhead is paid once per batch. Errors are re-found per record to name the right one.
        simple = not self._strip_ids and not self._has_unk and len(seqs) > 1
        if simple and all(isinstance(x, str) for x in seqs):
            joiner = ""
        elif simple and all(isinstance(x, (bytes, bytearray)) for x in seqs):
            joiner = b""
        else:
            return super()._batch_bodies(seqs, max_body, names, path)
        if max_body is not None:
            seqs = [x[:max_body] for x in seqs]
        body_len = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
        try:
            flat = self._encode_body(joiner.join(seqs), None, None, 0)
        except TokenizerError:
            return super()._batch_bodies(seqs, max_body, names, path)  # raises for the bad record
        return flat, body_len

    def _decode_checked(self, arr: np.ndarray) -> str:
        if arr.size and arr.min() < NUM_SPECIAL:
            return super()._decode_checked(arr)
        return self._decode_table.take(arr).tobytes().decode("ascii")


class DnaTokenizer(_CharTokenizer):
    """DNA: ``A7 C8 G9 T10 N11`` after the 7 specials (vocab 12, HyenaDNA/Caduceus compatible).

    Args:
        iupac: ``"n"`` (default) maps R Y S W K M B D H V to N; ``"unk"`` to [UNK]; ``"error"`` raises.
        unknown: ``"error"`` (default) raises on any other character; ``"unk"`` maps it to [UNK].
        u_to_t: map RNA ``U`` to ``T`` (default True); if False, ``U`` counts as unknown.
    """

    name = "dna"
    symbols = DNA_SYMBOLS
    _kind = "DNA"

    def __init__(self, *, iupac: str = "n", unknown: str = "error", u_to_t: bool = True) -> None:
        if iupac not in ("n", "error", "unk"):
            raise ValueError(f"iupac must be 'n', 'error' or 'unk', got {iupac!r}")
        self.iupac = iupac
        self.u_to_t = bool(u_to_t)
        parts = ["ACGTN"]
        if iupac != "error":
            parts.append("IUPAC codes RYSWKMBDHV")
        if u_to_t:
            parts.append("U")
        self._allowed_text = ", ".join(parts) + " (either case)"
        super().__init__(unknown=unknown)
        comp = np.arange(self.vocab_size, dtype=np.int64)
        for a in DNA_SYMBOLS:
            comp[self.vocab.index(a)] = self.vocab.index(DNA_COMPLEMENT[a])
        self._complement = comp

    def _extend_table(self, table: np.ndarray) -> None:
        value = {"n": self.vocab.index("N"), "unk": UNK_ID, "error": _AMBIGUOUS}[self.iupac]
        for ch in DNA_IUPAC:
            self._map(table, ch, value)
        if self.u_to_t:
            self._map(table, "U", self.vocab.index("T"))

    def _options(self) -> dict[str, Any]:
        return {"iupac": self.iupac, "unknown": self.unknown, "u_to_t": self.u_to_t}

    @property
    def symbol_ids(self) -> torch.Tensor:
        """A C G T (7..10); N is excluded from MLM random replacement."""
        return torch.tensor([self.vocab.index(c) for c in "ACGT"], dtype=torch.long)

    @property
    def complement_map(self) -> torch.Tensor:
        """LongTensor[vocab_size]: A<->T, C<->G, N->N, every special id to itself."""
        return torch.from_numpy(self._complement.copy())

    def _complement_of(self, ids: Any) -> Any:
        if isinstance(ids, torch.Tensor):
            # range check on CPU only: on an accelerator it would cost a host sync per call
            on_cpu = ids.device.type == "cpu" and ids.numel() > 0
            if on_cpu and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
                raise ValueError(f"ids must lie in 0..{self.vocab_size - 1} to be complemented")
            return torch.from_numpy(self._complement).to(ids.device)[ids].to(ids.dtype)
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in 0..{self.vocab_size - 1} to be complemented")
        return self._complement[arr].astype(arr.dtype, copy=False)

    def reverse_complement(self, ids: Any) -> Any:
        """Reverse complement of ids (numpy array or tensor, any leading dims) along the last dim.

        Special ids keep their value but move with the reversal, so ``[CLS] A C [SEP]`` becomes
        ``[SEP] G T [CLS]``: reverse-complement ids encoded without specials, or the string. For
        right-padded batches use :meth:`reverse_complement_padded`. An involution.
        """
        comp = self._complement_of(ids)
        if isinstance(comp, torch.Tensor):
            return comp.flip(-1)
        return np.ascontiguousarray(comp[..., ::-1])

    def reverse_complement_padded(self, input_ids: Any, attention_mask: Any) -> Any:
        """Reverse complement each row of a right-padded batch within its own length.

        ``input_ids`` [..., L] (tensor or numpy) and ``attention_mask`` [..., L] (True = real token,
        a prefix of each row). Padding stays on the right, unchanged.
        """
        is_torch = isinstance(input_ids, torch.Tensor)
        xp_mask = attention_mask.bool() if is_torch else np.asarray(attention_mask).astype(bool)
        width = input_ids.shape[-1]
        if tuple(xp_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask shape {tuple(xp_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        if is_torch:
            pos = torch.arange(width, device=input_ids.device)
            lengths = xp_mask.sum(-1, keepdim=True)
            inside = pos < lengths
            if not torch.equal(inside, xp_mask):
                raise ValueError("attention_mask is not right-padded (True then False in every row)")
            src = torch.where(inside, lengths - 1 - pos, pos)
            return self._complement_of(torch.gather(input_ids, -1, src.expand_as(input_ids)))
        ids = np.asarray(input_ids)
        pos = np.arange(width)
        lengths = xp_mask.sum(-1, keepdims=True)
        inside = pos < lengths
        if not np.array_equal(inside, xp_mask):
            raise ValueError("attention_mask is not right-padded (True then False in every row)")
        src = np.where(inside, lengths - 1 - pos, pos)
        return self._complement_of(np.take_along_axis(ids, np.broadcast_to(src, ids.shape), axis=-1))

    def reverse_complement_str(self, seq: str) -> str:
        """Reverse complement of a DNA string (case kept, IUPAC codes complemented, N->N)."""
        return seq.translate(_DNA_STR_COMPLEMENT)[::-1]


_DNA_STR_COMPLEMENT = str.maketrans("ACGTURYSWKMBDHVNacgturyswkmbdhvn", "TGCAAYRSWMKVHDBNtgcaayrswmkvhdbn")


class ProteinTokenizer(_CharTokenizer):
    """Protein: 20 standard amino acids (7..26), ``X B Z U O`` (27..31), ``*`` 32, gaps ``-`` 33 ``.`` 34.

    Args:
        strip_gaps: drop ``-`` and ``.`` (alignment gaps) while encoding.
        unknown: ``"error"`` (default) raises on other characters (e.g. ``J``, digits); ``"unk"``
            maps them to [UNK].
    """

    name = "protein"
    symbols = PROTEIN_SYMBOLS
    _kind = "protein"
    _allowed_text = "20 standard amino acids, X B Z U O, '*', gaps '-' '.' (either case)"

    def __init__(self, *, strip_gaps: bool = False, unknown: str = "error") -> None:
        super().__init__(unknown=unknown)
        self.strip_gaps = bool(strip_gaps)
        if self.strip_gaps:
            self._strip_ids = bytes(self.vocab.index(g) for g in PROTEIN_GAPS)

    def _options(self) -> dict[str, Any]:
        return {"strip_gaps": self.strip_gaps, "unknown": self.unknown}

    @property
    def symbol_ids(self) -> torch.Tensor:
        """The 20 standard amino acids (7..26)."""
        return torch.arange(NUM_SPECIAL, NUM_SPECIAL + len(PROTEIN_STANDARD), dtype=torch.long)


class ProtXLSTMTokenizer(ProteinTokenizer):
    """Prot-xLSTM's (and ProtMamba's) own 38-token protein vocabulary, for its released weights.

    Ids (the ESM-2 alphabet, then five fill-in-the-middle masks)::

        <cls>0 <pad>1 <eos>2 <unk>3 L4 A5 G6 V7 S8 E9 R10 T11 I12 D13 P14 K15 Q16 N17 F18 Y19 M20 H21
        W22 C23 X24 B25 U26 Z27 O28 .29 -30 <null_1>31 <mask>32 <mask-1>33 ... <mask-5>37

    Each protein starts with ``<cls>`` (``add_cls=True``); a homolog context is proteins one after the
    other (``models.xlstm.homolog_context`` adds the fill-in-the-middle layout). ``*`` is not in this
    vocabulary (an error, or ``<unk>`` with ``unknown="unk"``); gaps ``-`` and ``.`` are tokens unless
    ``strip_gaps``. There is no [BOS] or [RESERVED]; ``sep_id == eos_id == 2``.
    """

    name = "prot-xlstm"
    alphabet = "protein"
    symbols = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
    _allowed_text = "20 standard amino acids, X B Z U O, gaps '-' '.' (either case)"
    special_tokens = ("<cls>", "<pad>", "<eos>", "<unk>", "<null_1>", "<mask>",
                      "<mask-1>", "<mask-2>", "<mask-3>", "<mask-4>", "<mask-5>")
    cls_id, pad_id, sep_id, eos_id, unk_id, mask_id = 0, 1, 2, 2, 3, 32
    bos_id = reserved_id = None
    fim_mask_ids = (33, 34, 35, 36, 37)

    def __init__(self, *, strip_gaps: bool = False, unknown: str = "error") -> None:
        BaseTokenizer.__init__(self)
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        self.strip_gaps = bool(strip_gaps)
        specials = self.special_tokens
        self.vocab = [*specials[:4], *self.symbols, *specials[4:]]
        table = np.full(256, _INVALID if unknown == "error" else self.unk_id, dtype=np.uint8)
        for i, ch in enumerate(self.symbols):
            self._map(table, ch, 4 + i)
        self._table = table.tobytes()
        self._has_unk = unknown == "unk"
        decode = np.zeros(self.vocab_size, dtype=np.uint8)
        decode[4:4 + len(self.symbols)] = np.frombuffer(self.symbols.encode("ascii"), dtype=np.uint8)
        self._decode_table = decode
        self._is_special = np.array([t in specials for t in self.vocab])
        self._strip_ids = bytes(self.vocab.index(g) for g in PROTEIN_GAPS) if self.strip_gaps else b""

    @property
    def special_ids(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self._is_special)]

    @property
    def symbol_ids(self) -> torch.Tensor:
        """The 20 standard amino acids (4..23)."""
        return torch.arange(4, 4 + len(PROTEIN_STANDARD), dtype=torch.long)

    def _without_specials(self, arr: np.ndarray, low: int) -> np.ndarray:
        return arr[~self._is_special[arr]]

    def _decode_checked(self, arr: np.ndarray) -> str:
        if arr.size and self._is_special[arr].any():
            return BaseTokenizer._decode_checked(self, arr)
        return self._decode_table.take(arr).tobytes().decode("ascii")


# --------------------------------------------------------------------------------------------- SMILES
_SMILES_GRAMMAR = (
    r"\[[^\[\]\s]+\]"  # bracket atom: [nH+] [C@@H] [13CH3] [Na+] [Fe+2]
    r"|Br|Cl|[BCNOPSFI]"  # organic subset, two-letter first
    r"|[bcnops]"  # aromatic organic subset
    r"|%\(\d+\)|%\d\d|\d"  # ring-bond labels: %(123) %12 1
    r"|[-=#$:/\\~]"  # bonds (incl. / \ stereo, ~ any bond)
    r"|[()]"  # branches
    r"|[.*>]"  # disconnection, wildcard atom, reaction arrow
)
_SMILES_RE = re.compile(rf"(?:{_SMILES_GRAMMAR})|(?P<other>.)", re.DOTALL)
_SMILES_TOKEN_RE = re.compile(_SMILES_GRAMMAR)

DEFAULT_SMILES_TOKENS: tuple[str, ...] = (
    "C", "c", "(", ")", "O", "1", "2", "=", "N", "n", "3", "F", "Cl", "[C@@H]", "[C@H]", "S", "4", "o",
    "#", "Br", "s", "/", "[nH]", "[O-]", "[N+]", "\\", "5", "[C@]", "[C@@]", "I", "P", "-", ".", "6",
    "[NH+]", "[NH2+]", "[NH3+]", "[n+]", "[N-]", "[n-]", "[S+]", "[S-]", "[s+]", "[o+]", "[H]", "[2H]",
    "[Na+]", "[K+]", "[Li+]", "[Cl-]", "[Br-]", "[I-]", "[Ca+2]", "[Mg+2]", "[Zn+2]", "[Si]", "[Se]",
    "[se]", "[B-]", "[P+]", "[C-]", "[CH2]", "[CH]", "[S@]", "[S@@]", "[N@]", "[N@@]", "[N@+]",
    "[N@@+]", "[P@]", "[P@@]", "[nH+]", "[Pt]", "[Fe]", "[Sn]", "[As]", "[Al]", "B", "b", "p", "7",
    "8", "9", "%10", "%11", "%12", "*", ":", "$", "~", ">",
)


def smiles_tokens(smiles: str) -> list[str]:
    """Regex atom-level tokens of one SMILES (outer whitespace stripped).

    Characters outside the grammar come out as single-character tokens, so
    ``"".join(smiles_tokens(s)) == s.strip()`` always holds.
    """
    return [m.group() for m in _SMILES_RE.finditer(smiles.strip())]


class SmilesTokenizer(BaseTokenizer):
    """SMILES: regex atom-level tokens after the 7 specials, vocabulary built from data.

    Args:
        vocab: the token list, with or without the 7 specials in front (they are prepended when
            absent). ``None`` gives :data:`DEFAULT_SMILES_TOKENS` (for a model without a saved
            vocabulary; build one from your data with :meth:`build` instead where you can).
        unknown: ``"unk"`` (default) maps unknown tokens to [UNK] (counted in ``unk_count``,
            warned once); ``"error"`` raises naming the position.
    """

    name = "smiles"

    def __init__(self, vocab: Sequence[str] | None = None, *, unknown: str = "unk") -> None:
        super().__init__()
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        tokens = list(DEFAULT_SMILES_TOKENS if vocab is None else vocab)
        if tuple(tokens[:NUM_SPECIAL]) == SPECIAL_TOKENS:
            tokens = tokens[NUM_SPECIAL:]
        full = list(SPECIAL_TOKENS) + tokens
        dupes = [t for t, n in Counter(full).items() if n > 1]
        if dupes:
            raise TokenizerError(f"SMILES vocabulary has duplicate or special-named tokens: {dupes[:5]}")
        bad = [t for t in tokens if not isinstance(t, str) or not t]
        if bad:
            raise TokenizerError(f"SMILES vocabulary tokens must be non-empty strings, got {bad[:5]!r}")
        self.vocab = full

    @classmethod
    def build(cls, smiles: Iterable[str], *, min_freq: int = 1, max_size: int | None = None,
              include_defaults: bool = False, unknown: str = "unk") -> SmilesTokenizer:
        """Vocabulary from data: every grammar token seen at least ``min_freq`` times.

        Tokens are ordered by frequency (then alphabetically), so the result is deterministic.
        ``max_size`` caps the number of non-special tokens; ``include_defaults`` also adds
        :data:`DEFAULT_SMILES_TOKENS`. Characters outside the grammar are not added (they
        encode as [UNK]); a warning says how many were seen.
        """
        counts: Counter[str] = Counter()
        outside: Counter[str] = Counter()
        for s in smiles:
            for m in _SMILES_RE.finditer(s.strip()):
                (outside if m.lastgroup == "other" else counts)[m.group()] += 1
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        if include_defaults:
            seen = set(kept)
            kept += [t for t in DEFAULT_SMILES_TOKENS if t not in seen]
        if outside:
            warnings.warn(f"SmilesTokenizer.build: {sum(outside.values())} characters outside the SMILES "
                          f"grammar (e.g. {', '.join(map(repr, list(outside)[:5]))}) will encode as [UNK]",
                          stacklevel=2)
        return cls(kept, unknown=unknown)

    def tokenize(self, smiles: str) -> list[str]:
        """Tokens of one SMILES; ``"".join(tokens) == smiles.strip()``."""
        return smiles_tokens(smiles)

    def _encode_body(self, seq: Any, path: object, record: object, offset: int,
                     lead: int = 0, trail: int = 0) -> np.ndarray:
        if isinstance(seq, (bytes, bytearray, memoryview)):
            seq = bytes(seq).decode("utf-8", errors="replace")
        if not isinstance(seq, str):
            raise TypeError(f"SmilesTokenizer.encode takes str or bytes, got {type(seq).__name__}")
        skipped = len(seq) - len(seq.lstrip())  # leading whitespace, for 1-based positions
        index = self._index
        ids = [0] * lead
        first_unknown = None
        n_unknown = 0
        for m in _SMILES_RE.finditer(seq.strip()):
            tok = m.group()
            idx = index.get(tok, UNK_ID)
            if idx <= UNK_ID:  # not in the vocabulary, or text that names a special token
                idx = UNK_ID
                n_unknown += 1
                if first_unknown is None:
                    first_unknown = (tok, offset + skipped + m.start() + 1)
                    if self.unknown == "error":
                        self._raise_unknown(tok, first_unknown[1], path, record)
            ids.append(idx)
        if n_unknown:
            self._note_unknown(n_unknown, first_unknown[0], path, record, first_unknown[1])
        ids.extend([0] * trail)
        return np.array(ids, dtype=np.int64)

    def _raise_unknown(self, tok: str, position: int, path: object, record: object) -> None:
        what = "token" if _SMILES_TOKEN_RE.fullmatch(tok) else "character outside the SMILES grammar"
        raise TokenizerError(f"{_where(path, record, position)}SMILES {what} {tok!r} is not in the "
                             f"vocabulary (unknown='unk' maps it to [UNK])",
                             path=path, record=record, position=position, char=tok)

    def _options(self) -> dict[str, Any]:
        return {"unknown": self.unknown}

    @classmethod
    def _from_dict(cls, config: dict[str, Any]) -> SmilesTokenizer:
        vocab = config.get("vocab")
        if not isinstance(vocab, list):
            raise TokenizerError("SMILES tokenizer config needs a 'vocab' list")
        if tuple(vocab[:NUM_SPECIAL]) != SPECIAL_TOKENS:
            raise TokenizerError(f"SMILES tokenizer vocabulary must start with {list(SPECIAL_TOKENS)}")
        return cls._construct(vocab, **config.get("options", {}))


# --------------------------------------------------------------------------------------------- factory
_REGISTRY: dict[str, type[BaseTokenizer]] = {
    "dna": DnaTokenizer,
    "protein": ProteinTokenizer,
    "prot-xlstm": ProtXLSTMTokenizer,
    "smiles": SmilesTokenizer,
}


def get_tokenizer(name: str, **kwargs: Any) -> BaseTokenizer:
    """``get_tokenizer("dna", iupac="n")``; a path to a ``.json`` file loads a saved tokenizer."""
    key = str(name).lower()
    if key in _REGISTRY:
        return _REGISTRY[key]._construct(**kwargs)
    if key.endswith(".json") or Path(name).is_file():
        if kwargs:
            raise TypeError(f"options {sorted(kwargs)} cannot be applied to a saved tokenizer file")
        return BaseTokenizer.load(name)
    raise TokenizerError(f"unknown tokenizer {name!r} (expected one of {sorted(_REGISTRY)} or a "
                         f"tokenizer .json file)")


def load_tokenizer(path: str | Path) -> BaseTokenizer:
    """Load any tokenizer saved with ``save`` (dispatches on its ``name``)."""
    return BaseTokenizer.load(path)


def tokenizer_from_config(config: dict[str, Any]) -> BaseTokenizer:
    """A tokenizer from a config dict.

    Accepts :meth:`BaseTokenizer.to_dict` output (has ``vocab``/``options``) or a flat
    ``{"name": "dna", "iupac": "n", ...}`` (options as keys; ``"alphabet"`` also works for name).
    Flat option keys next to a ``to_dict`` output override its ``options``:
    ``{**tok.to_dict(), "unknown": "unk"}``.
    """
    config = dict(config)
    if "vocab" in config or "options" in config:
        extra = {k: config.pop(k) for k in list(config) if k not in ("name", "version", "vocab", "options")}
        config["options"] = {**(config.get("options") or {}), **extra}
        return BaseTokenizer.from_dict(config)
    name = config.pop("name", None) or config.pop("alphabet", None)
    config.pop("version", None)
    if name is None:
        raise TokenizerError("tokenizer config needs a 'name' (dna, protein or smiles)")
    return get_tokenizer(name, **config)
