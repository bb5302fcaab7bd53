"""Alphabets and the DNA complement: the one table every module uses (tokenizers, FASTA validation,
``bioseq inspect``, benchmark readers, the synthetic genome).

Tokenizer ids are fixed elsewhere (``bioseq.tokenizers``: the order of ``DNA_SYMBOLS`` and
``PROTEIN_TOKEN_SYMBOLS`` is the id order and never changes).
"""

from __future__ import annotations

import numpy as np

DNA_CANONICAL = "ACGT"
DNA_SYMBOLS = "ACGTN"                      # tokenizer symbols, in id order
DNA_IUPAC = "RYSWKMBDHV"                   # ambiguity codes (mapped to N by default)
#: Watson-Crick complement of every DNA letter, IUPAC codes included (R<->Y, K<->M, B<->V, D<->H;
#: S, W and N are their own complement).
DNA_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N", "R": "Y", "Y": "R", "S": "S",
                  "W": "W", "K": "M", "M": "K", "B": "V", "V": "B", "D": "H", "H": "D"}

PROTEIN_STANDARD = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues
PROTEIN_AMBIGUOUS = "BZJX"                 # Asx, Glx, Xle, any
PROTEIN_RARE = "UO"                        # selenocysteine, pyrrolysine
PROTEIN_STOP = "*"
PROTEIN_GAPS = "-."
#: Protein tokenizer symbols in id order (J is accepted by FASTA validation but has no token).
PROTEIN_TOKEN_SYMBOLS = PROTEIN_STANDARD + "XBZUO" + PROTEIN_STOP + PROTEIN_GAPS

#: Letters a FASTA file may hold for an alphabet (either case).
FASTA_ALPHABETS = {
    "dna": DNA_SYMBOLS + DNA_IUPAC,
    "protein": PROTEIN_STANDARD + PROTEIN_AMBIGUOUS + PROTEIN_RARE + PROTEIN_STOP + PROTEIN_GAPS,
}

_pairs = "".join(DNA_COMPLEMENT), "".join(DNA_COMPLEMENT.values())
_TRANS = str.maketrans(_pairs[0] + _pairs[0].lower(), _pairs[1] + _pairs[1].lower())

#: uint8[256]: the complement of each ASCII DNA byte (case kept); every other byte maps to itself.
COMPLEMENT_BYTES = np.arange(256, dtype=np.uint8)
for _a, _b in zip((_pairs[0] + _pairs[0].lower()).encode(), (_pairs[1] + _pairs[1].lower()).encode()):
    COMPLEMENT_BYTES[_a] = _b


def reverse_complement_text(seq: str) -> str:
    """Reverse complement of a DNA string (IUPAC codes complemented, case kept)."""
    return seq.translate(_TRANS)[::-1]
