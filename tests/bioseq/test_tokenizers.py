"""Tokenizers: exact ids, vectorised encode against a per-character reference, errors, batching,
reverse complement, protein gaps, SMILES round trips on every SMILES in ../shared/data/smiles."""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from bioseq.errors import BioseqError
from bioseq.tokenizers import (
    SPECIAL_TOKENS,
    DnaTokenizer,
    ProteinTokenizer,
    SmilesTokenizer,
    TokenizerError,
    get_tokenizer,
    load_tokenizer,
    smiles_tokens,
    tokenizer_from_config,
)
from tests.conftest import shared_path

SPECIALS = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]


def read_fasta_gz(path) -> list[tuple[str, str]]:
    """Minimal independent FASTA reader for the tests (id, sequence)."""
    records: list[tuple[str, list[str]]] = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                records.append((line[1:].split()[0], []))
            elif line:
                records[-1][1].append(line)
    return [(name, "".join(parts)) for name, parts in records]


def dna_reference(seq: str) -> np.ndarray:
    """Per-character definition of the default DNA mapping (the spec the fast path must meet)."""
    table = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11, "U": 10}
    table.update({c: 11 for c in "RYSWKMBDHV"})
    return np.array([table[c.upper()] for c in seq], dtype=np.int64)


def random_dna(n: int, seed: int, alphabet: str = "ACGTNacgtnRYSWKMBDHVryswkmbdhvUu") -> str:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(alphabet.encode(), dtype=np.uint8)
    return letters[rng.integers(0, len(letters), n)].tobytes().decode()


def smiles_from_csv(path) -> list[str]:
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        column = next(c for c in reader.fieldnames if c.strip().lower() == "smiles")
        return [row[column] for row in reader]


@pytest.fixture(scope="module")
def all_smiles() -> list[str]:
    folder = shared_path("data", "smiles")
    files = sorted(folder.glob("*.csv.gz"))
    assert files, f"no SMILES csv.gz in {folder}"
    return [s for f in files for s in smiles_from_csv(f)]


# ------------------------------------------------------------------------------------------- ids
def test_dna_id_table_is_exact():
    tok = DnaTokenizer()
    assert tok.vocab == SPECIALS + ["A", "C", "G", "T", "N"]
    assert list(SPECIAL_TOKENS) == SPECIALS
    assert tok.vocab_size == len(tok) == 12
    assert (tok.cls_id, tok.sep_id, tok.bos_id, tok.mask_id, tok.pad_id, tok.reserved_id, tok.unk_id) == (
        0, 1, 2, 3, 4, 5, 6)
    assert tok.eos_id == tok.sep_id == 1
    assert tok.symbol_ids.tolist() == [7, 8, 9, 10] and tok.symbol_ids.dtype == torch.long
    assert tok.complement_map.tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11]
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert tok.encode("ACGTN").dtype == np.int64
    assert tok.encode("ACG", add_cls=True, add_eos=True).tolist() == [0, 7, 8, 9, 1]
    assert tok.token_to_id("T") == 10 and tok.id_to_token(11) == "N"


def test_protein_id_table_is_exact():
    tok = ProteinTokenizer()
    assert tok.vocab == SPECIALS + list("ACDEFGHIKLMNPQRSTVWY") + list("XBZUO") + ["*", "-", "."]
    assert tok.vocab_size == 35
    assert tok.symbol_ids.tolist() == list(range(7, 27))
    assert tok.encode("MKU*-.").tolist() == [17, 15, 30, 32, 33, 34]


# ------------------------------------------------------------------------------------------- DNA encode
@pytest.mark.parametrize("n", [0, 1, 2, 7, 16_383, 16_384, 16_385, 262_144, 262_145, 600_001])
def test_dna_encode_matches_per_character_reference(n):
    """Odd/even lengths and chunk boundaries of the vectorised path; str, bytes and specials."""
    tok = DnaTokenizer()
    seq = random_dna(n, seed=n)
    expected = dna_reference(seq)
    np.testing.assert_array_equal(tok.encode(seq), expected)
    np.testing.assert_array_equal(tok.encode(seq.encode()), expected)
    np.testing.assert_array_equal(tok.encode(bytearray(seq.encode())), expected)
    with_specials = tok.encode(seq, add_cls=True, add_eos=True)
    assert with_specials[0] == 0 and with_specials[-1] == 1
    np.testing.assert_array_equal(with_specials[1:-1], expected)
    np.testing.assert_array_equal(tok(seq, add_eos=True)[:-1], expected)


def test_dna_round_trip_real_genome():
    """E. coli K-12: 4,641,652 bp encode -> decode unchanged; the counts of each base agree."""
    (name, seq), = read_fasta_gz(shared_path("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"))
    tok = DnaTokenizer()
    ids = tok.encode(seq, record=name)
    assert ids.shape == (4_641_652,)
    assert tok.decode(ids) == seq
    counts = np.bincount(ids, minlength=12)
    assert [int(c) for c in counts[7:11]] == [seq.count(b) for b in "ACGT"]


@pytest.mark.parametrize("name, total_bp, n_count", [
    ("dmel_r6.42_1pct.fa.gz", 1_375_477, 17_972),
    ("athaliana_tair10_1pct.fa.gz", 1_196_674, 2_220 + 5),  # + IUPAC K x3, Y x1, S x1 -> N
    ("sacCer3_17x10kb.bgzf.fa.gz", 170_000, None),
    ("sacCer3_chrIV_singleline.fa.gz", 1_531_933, None),
])
def test_dna_every_shared_genome_encodes(name, total_bp, n_count):
    records = read_fasta_gz(shared_path("data", "genome", name))
    tok = DnaTokenizer()
    ids = [tok.encode(seq, path=name, record=rid) for rid, seq in records]
    assert sum(len(x) for x in ids) == total_bp
    n_ids = sum(int((x == 11).sum()) for x in ids)
    assert n_ids == (n_count if n_count is not None else sum(seq.upper().count("N") for _, seq in records))
    assert all(tok.decode(x) == seq.upper().translate(str.maketrans("RYSWKMBDHV", "N" * 10))
               for x, (_, seq) in zip(ids, records))


def test_dna_lowercase_is_folded():
    tok = DnaTokenizer()
    np.testing.assert_array_equal(tok.encode("acgtnACGTNrY"), tok.encode("ACGTNACGTNRY"))
    assert tok.decode(tok.encode("acgtnAcGt")) == "ACGTNACGT"


def test_dna_iupac_modes_on_real_genome():
    """A. thaliana 1%: 2,220 N in runs plus IUPAC K x3, Y x1, S x1 (SOURCES.md)."""
    records = read_fasta_gz(shared_path("data", "genome", "athaliana_tair10_1pct.fa.gz"))
    default, as_unk, strict = DnaTokenizer(), DnaTokenizer(iupac="unk"), DnaTokenizer(iupac="error")
    n_ids = sum(int((default.encode(s, record=r) == 11).sum()) for r, s in records)
    assert n_ids == 2220 + 5
    with pytest.warns(UserWarning, match="UNK"):
        unk = sum(int((as_unk.encode(s, record=r) == 6).sum()) for r, s in records)
    assert unk == 5 and as_unk.unk_count == 5
    name, seq = next((r, s) for r, s in records if any(c in s for c in "KYS"))
    first = min(i for i in (seq.find(c) for c in "KYS") if i >= 0)
    with pytest.raises(TokenizerError) as err:
        strict.encode(seq, path="at.fa", record=name)
    assert err.value.position == first + 1 and err.value.char == seq[first]
    assert f"record '{name}'" in str(err.value) and f"position {first + 1}" in str(err.value)
    assert "IUPAC" in str(err.value)


def test_dna_u_maps_to_t_unless_disabled():
    assert DnaTokenizer().encode("ACGUu").tolist() == [7, 8, 9, 10, 10]
    with pytest.raises(TokenizerError, match="'U'"):
        DnaTokenizer(u_to_t=False).encode("ACGU")


@pytest.mark.parametrize(
    "seq, bad_index, char",
    [("ACGTX", 4, "X"), ("AC-GT", 2, "-"), ("ACGT\n", 4, "\n"), ("ACGé", 3, "é"), ("1", 0, "1"),
     ("A" * 70_000 + "*" + "C" * 10, 70_000, "*"), ("A" * 300_000 + "*" + "C" * 9, 300_000, "*"),
     ("A" * 300_000 + "Z", 300_000, "Z"), ("A" * 16_384 + "Z", 16_384, "Z")],
)
def test_dna_invalid_character_error(seq, bad_index, char):
    tok = DnaTokenizer()
    with pytest.raises(TokenizerError) as err:
        tok.encode(seq, path="reads.fa", record="chr2", offset=1000, add_eos=True)
    msg = str(err.value)
    assert isinstance(err.value, BioseqError)
    assert "\n" not in msg
    assert msg.startswith("reads.fa, record 'chr2', position ")
    assert f"position {1000 + bad_index + 1}:" in msg
    assert repr(char) in msg and "unknown='unk'" in msg
    assert err.value.position == 1000 + bad_index + 1 and err.value.char == char
    assert err.value.path == "reads.fa" and err.value.record == "chr2"


def test_dna_invalid_byte_in_bytes_input():
    with pytest.raises(TokenizerError, match=r"position 3: .*U\+00FF"):
        DnaTokenizer().encode(b"AC\xffGT")


def test_dna_unknown_non_ascii_warning_names_the_character():
    with pytest.warns(UserWarning, match=r"position 3: 'é'"):
        assert DnaTokenizer(unknown="unk").encode("ACéT").tolist() == [7, 8, 6, 10]


def test_dna_unknown_to_unk_counts_and_warns_once():
    tok = DnaTokenizer(unknown="unk")
    with pytest.warns(UserWarning, match=r"position 3: 'X'.*unk_count") as rec:
        ids = tok.encode("ACXGT-", record="r1")
    assert len(rec) == 1
    assert ids.tolist() == [7, 8, 6, 9, 10, 6]
    assert tok.unk_count == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        assert tok.encode("ÿA").tolist() == [6, 7]  # non-ASCII str: one [UNK] per character
    assert tok.unk_count == 3


# ------------------------------------------------------------------------------------------- decode
def test_decode_specials_and_errors():
    tok = DnaTokenizer()
    ids = tok.encode("ACGTN", add_cls=True, add_eos=True)
    assert tok.decode(ids) == "ACGTN"
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS]ACGTN[SEP]"
    assert tok.decode(torch.tensor([7, 4, 8])) == "AC"
    assert tok.decode([]) == ""
    with pytest.raises(TokenizerError, match="id 12"):
        tok.decode([7, 12])
    with pytest.raises(TokenizerError, match="id -1"):
        tok.decode(np.array([-1]))
    batch = tok.batch_encode(["ACG", "T"], add_eos=True)
    assert tok.batch_decode(batch["input_ids"], batch["attention_mask"]) == ["ACG", "T"]
    assert tok.batch_decode(batch["input_ids"], batch["attention_mask"], skip_special_tokens=False) == [
        "ACG[SEP]", "T[SEP]"]


# ------------------------------------------------------------------------------------------- batches
def test_batch_encode_padding_mask_eos_cls():
    tok = DnaTokenizer()
    out = tok.batch_encode(["ACGT", "a", ""], add_eos=True, add_cls=True)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[0, 7, 8, 9, 10, 1], [0, 7, 1, 4, 4, 4], [0, 1, 4, 4, 4, 4]]
    assert mask.sum(1).tolist() == [6, 3, 2]
    assert (ids[~mask] == tok.pad_id).all()
    plain = tok.batch_encode(["ACGT", "GG"])
    assert plain["input_ids"].tolist() == [[7, 8, 9, 10], [9, 9, 4, 4]]
    assert plain["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]


def test_batch_encode_truncation_keeps_specials_and_pads_to_max_length():
    tok = DnaTokenizer()
    out = tok.batch_encode(["ACGTACGT", "AC"], max_length=5, add_cls=True, add_eos=True)
    assert out["input_ids"].tolist() == [[0, 7, 8, 9, 1], [0, 7, 8, 1, 4]]
    out = tok.batch_encode(["ACGTACGT", "AC"], max_length=6, padding="max_length", pad_to_multiple_of=4)
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum(1).tolist() == [6, 2]
    # truncation happens before validation: a bad character past max_length is never read
    assert tok.batch_encode(["ACGX"], max_length=3)["input_ids"].tolist() == [[7, 8, 9]]
    with pytest.raises(ValueError, match="no room"):
        tok.batch_encode(["A"], max_length=1, add_cls=True, add_eos=True)
    empty = tok.batch_encode([])
    assert empty["input_ids"].shape == (0, 0)


def test_batch_encode_names_the_bad_record():
    tok = DnaTokenizer()
    with pytest.raises(TokenizerError, match=r"record 'seq2', position 2: invalid DNA character 'Q'"):
        tok.batch_encode(["ACGT", "AQ"], names=["seq1", "seq2"])
    with pytest.raises(TokenizerError, match=r"record '1', position 2"):
        tok.batch_encode(["ACGT", "AQ"])
    with pytest.raises(TokenizerError, match=r"record '2', position 1"):
        tok.batch_encode([b"ACGT", b"A", b"QA"])


def test_batch_encode_str_bytes_and_mixed_agree():
    tok = ProteinTokenizer()
    seqs = ["MKV", "ACDEFGHIKLMNPQRSTVWY", "", "mk*"]
    expected = tok.batch_encode(seqs)["input_ids"]
    assert torch.equal(tok.batch_encode([x.encode() for x in seqs])["input_ids"], expected)
    assert torch.equal(tok.batch_encode([seqs[0].encode()] + seqs[1:])["input_ids"], expected)
    for i, x in enumerate(seqs):
        assert expected[i, :len(x)].tolist() == tok.encode(x).tolist()


def test_batch_encode_real_benchmark_rows():
    """GB human_nontata_promoters test split: 251 bp each (one contains an N)."""
    path = shared_path("data", "genomic_benchmarks", "sequences", "human_nontata_promoters", "test.tsv.gz")
    with gzip.open(path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t")[0] for line in fh][1:400]
    tok = DnaTokenizer()
    out = tok.batch_encode(rows, add_eos=True)
    assert out["input_ids"].shape == (len(rows), 252)
    assert out["attention_mask"].all()
    assert (out["input_ids"][:, -1] == 1).all()
    np.testing.assert_array_equal(out["input_ids"][5, :-1].numpy(), dna_reference(rows[5]))


# --------------------------------------------------------------------------------------- reverse complement
def test_reverse_complement_values_and_involution():
    tok = DnaTokenizer()
    ids = tok.encode("AACGTN")
    rc = tok.reverse_complement(ids)
    assert tok.decode(rc) == "NACGTT"
    np.testing.assert_array_equal(tok.reverse_complement(rc), ids)
    seq = random_dna(10_001, seed=3, alphabet="ACGTN")
    ids = tok.encode(seq)
    assert tok.decode(tok.reverse_complement(ids)) == tok.reverse_complement_str(seq)
    batch = torch.from_numpy(np.stack([ids[:100], ids[100:200]]))
    rc_t = tok.reverse_complement(batch)
    assert isinstance(rc_t, torch.Tensor) and rc_t.shape == (2, 100)
    assert torch.equal(tok.reverse_complement(rc_t), batch)
    assert rc_t[1].tolist() == tok.reverse_complement(ids[100:200]).tolist()
    # specials keep their id; the flip moves them
    with_specials = tok.encode("AC", add_cls=True, add_eos=True)
    assert tok.reverse_complement(with_specials).tolist() == [1, 9, 10, 0]
    with pytest.raises(ValueError):
        tok.reverse_complement(np.array([7, -100]))
    assert tok.reverse_complement(torch.tensor([7, 8], dtype=torch.int32)).tolist() == [9, 10]
    assert tok.reverse_complement(torch.tensor([7, 8], dtype=torch.int32)).dtype == torch.int32


@pytest.mark.parametrize("as_torch", [True, False])
def test_reverse_complement_padded_flips_within_length(as_torch):
    tok = DnaTokenizer()
    seqs = ["ACGTT", "GGA", "", "TTTTTTNC"]
    batch = tok.batch_encode(seqs)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if not as_torch:
        ids, mask = ids.numpy(), mask.numpy()
    rc = tok.reverse_complement_padded(ids, mask)
    assert type(rc) is type(ids)
    expected = tok.batch_encode([tok.reverse_complement_str(s) for s in seqs])["input_ids"]
    np.testing.assert_array_equal(np.asarray(rc), expected.numpy())
    np.testing.assert_array_equal(np.asarray(tok.reverse_complement_padded(rc, mask)), np.asarray(ids))
    bad_mask = np.asarray(mask).copy()
    bad_mask[0, 0] = False
    with pytest.raises(ValueError, match="right-padded"):
        tok.reverse_complement_padded(ids, torch.from_numpy(bad_mask) if as_torch else bad_mask)


def test_reverse_complement_str_handles_iupac_and_case():
    tok = DnaTokenizer()
    assert tok.reverse_complement_str("AcgRYN") == "NRYcgT"
    seq = random_dna(1000, seed=5)
    np.testing.assert_array_equal(tok.encode(tok.reverse_complement_str(seq)),
                                  tok.reverse_complement(tok.encode(seq)))


# ------------------------------------------------------------------------------------------- protein
def test_protein_real_proteome_and_selenocysteine():
    """E. coli proteome: 4,298 records, 3 U (selenocysteine); all encode and round-trip."""
    records = read_fasta_gz(shared_path("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz"))
    assert len(records) == 4298
    tok = ProteinTokenizer()
    u_id = tok.token_to_id("U")
    n_u = 0
    for name, seq in records:
        ids = tok.encode(seq, record=name)
        n_u += int((ids == u_id).sum())
        assert len(ids) == len(seq)
    assert n_u == 3
    assert tok.decode(tok.encode(records[0][1])) == records[0][1]
    assert tok.encode("mkv").tolist() == tok.encode("MKV").tolist()


def test_protein_alignment_gaps_and_strip():
    """DHFR A2M: 3,629 aligned rows of 171 columns with '-' gaps and some X."""
    records = read_fasta_gz(shared_path("data", "protein", "DHFR_ecoli_homologs_plmc.a2m.gz"))
    assert len(records) == 3629
    keep, strip = ProteinTokenizer(), ProteinTokenizer(strip_gaps=True)
    gap = keep.token_to_id("-")
    batch = keep.batch_encode([s for _, s in records[:256]])
    assert batch["input_ids"].shape == (256, 171) and batch["attention_mask"].all()
    for name, seq in records[:500]:
        ids = keep.encode(seq, record=name)
        assert len(ids) == 171 and keep.decode(ids) == seq.upper()
        stripped = strip.encode(seq, record=name)
        assert gap not in stripped and strip.decode(stripped) == seq.upper().replace("-", "").replace(".", "")
    assert strip.encode("A.C-D", add_cls=True).tolist() == [0, 7, 8, 9]
    assert strip.encode("-" * 300_000 + "W").tolist() == [25]
    with pytest.raises(TokenizerError, match=r"position 3: invalid protein character 'J'"):
        strip.encode("M-J")


def test_prot_xlstm_vocabulary_on_the_real_proteome_and_alignment():
    """Prot-xLSTM's own ids: <cls>0 <pad>1 <eos>2 <unk>3, L4 ... O28, gaps .29 -30, masks 32..37; the
    whole E. coli proteome (fast path, long inputs) and DHFR alignment rows encode and round-trip."""
    from bioseq.tokenizers import ProtXLSTMTokenizer

    tok = get_tokenizer("prot-xlstm")
    assert isinstance(tok, ProtXLSTMTokenizer) and tok.vocab_size == 38
    assert tok.encode("LAGVSERTIDPKQNFYMHWCXBUZO.-").tolist() == list(range(4, 31))
    assert tok.encode("mk", add_cls=True, add_eos=True).tolist() == [0, 20, 15, 2]
    assert tok.decode([0, 20, 32, 33, 15, 2, 1]) == "MK"
    assert tok.decode([0, 20, 33, 2], skip_special_tokens=False) == "<cls>M<mask-1><eos>"
    assert tok.special_ids == [0, 1, 2, 3, 31, 32, 33, 34, 35, 36, 37]
    assert tok.symbol_ids.tolist() == list(range(4, 24))
    batch = tok.batch_encode(["MKV", "AC"], add_cls=True)
    assert batch["input_ids"].tolist() == [[0, 20, 15, 7], [0, 5, 23, 1]]
    records = read_fasta_gz(shared_path("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz"))
    for name, seq in records:
        assert tok.decode(tok.encode(seq, record=name)) == seq
    rows = read_fasta_gz(shared_path("data", "protein", "DHFR_ecoli_homologs_plmc.a2m.gz"))[:200]
    strip = get_tokenizer("prot-xlstm", strip_gaps=True)
    for name, seq in rows:
        assert tok.decode(tok.encode(seq, record=name)) == seq.upper()
        assert 30 not in strip.encode(seq, record=name)
    with pytest.raises(TokenizerError, match=r"record 'p1', position 3: invalid protein character '\*'"):
        tok.encode("MK*", record="p1")
    unk = get_tokenizer("prot-xlstm", unknown="unk")
    with pytest.warns(UserWarning, match="prot-xlstm vocabulary"):
        assert unk.encode("MK*J").tolist() == [20, 15, 3, 3]
    assert unk.unk_count == 2
    assert tokenizer_from_config(tok.to_dict()).to_dict() == tok.to_dict()
    assert pickle.loads(pickle.dumps(strip)).encode("A-C").tolist() == [5, 23]


# ------------------------------------------------------------------------------------------- SMILES
def test_smiles_tokens_cover_grammar():
    toks = smiles_tokens("  C[C@@H](Cl)c1ccc[nH+]c1Br.[Na+]%12C=C#N/C\\C=O*  ")
    assert toks == ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "c", "c", "c", "[nH+]", "c", "1", "Br", ".",
                    "[Na+]", "%12", "C", "=", "C", "#", "N", "/", "C", "\\", "C", "=", "O", "*"]
    assert smiles_tokens("C%(123)C$C:C>O") == ["C", "%(123)", "C", "$", "C", ":", "C", ">", "O"]
    # characters outside the grammar are kept as single tokens: nothing is lost
    odd = "C^C[unclosed Q"
    assert "".join(smiles_tokens(odd)) == odd


def test_smiles_round_trip_every_shared_smiles(all_smiles):
    assert len(all_smiles) == 1128 + 2050 + 4200
    tok = SmilesTokenizer.build(all_smiles)
    for s in all_smiles:
        tokens = tok.tokenize(s)
        assert "".join(tokens) == s.strip(), s
        assert tok.decode(tok.encode(s)) == s.strip(), s
    assert tok.unk_count == 0
    assert "[C@@H]" in tok.vocab and "Cl" in tok.vocab and "%10" in tok.vocab
    assert "l" not in tok.vocab and "@" not in tok.vocab


def test_smiles_build_vocab_order_min_freq_and_defaults():
    data = ["CCO", "CCN", "c1ccccc1Cl", "C[Se]C"]
    tok = SmilesTokenizer.build(data)
    assert tok.vocab[:7] == SPECIALS
    assert tok.vocab[7:] == ["C", "c", "1", "Cl", "N", "O", "[Se]"]  # by count, ties alphabetical
    assert SmilesTokenizer.build(data, min_freq=2).vocab[7:] == ["C", "c", "1"]
    assert SmilesTokenizer.build(data, max_size=2).vocab[7:] == ["C", "c"]
    assert "[nH]" in SmilesTokenizer.build(data, include_defaults=True).vocab
    with pytest.warns(UserWarning, match="outside the SMILES grammar"):
        built = SmilesTokenizer.build(["C^C"])
    assert "^" not in built.vocab


def test_smiles_vocab_save_load_equality(tmp_path, all_smiles):
    tok = SmilesTokenizer.build(all_smiles)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = SmilesTokenizer.load(path)
    assert loaded.vocab == tok.vocab and loaded.to_dict() == tok.to_dict()
    assert json.loads(path.read_text())["name"] == "smiles"
    again = load_tokenizer(path)
    assert isinstance(again, SmilesTokenizer)
    for s in all_smiles[500:600]:
        np.testing.assert_array_equal(loaded.encode(s), tok.encode(s))


def test_smiles_unknown_tokens_become_unk_with_one_warning():
    tok = SmilesTokenizer.build(["CCO", "c1ccccc1"])
    with pytest.warns(UserWarning, match=r"position 2: '\[Pt\]'.*\[UNK\]") as rec:
        ids = tok.encode("C[Pt]C^N", add_eos=True)
    assert len(rec) == 1
    assert ids.tolist() == [tok.token_to_id("C"), 6, tok.token_to_id("C"), 6, 6, 1]  # [Pt], ^, N
    assert tok.unk_count == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("[Xe]")
    assert tok.unk_count == 4
    assert tok.decode(ids, skip_special_tokens=False) == "C[UNK]C[UNK][UNK][SEP]"
    # text naming a special token is not that special token
    assert tok.encode("[CLS]").tolist() == [6]
    strict = SmilesTokenizer(tok.vocab, unknown="error")
    with pytest.raises(TokenizerError, match=r"record 'm7', position 3: SMILES token '\[Pt\]'"):
        strict.encode(" C[Pt]", record="m7")


def test_smiles_batch_encode_and_default_vocab():
    tok = SmilesTokenizer()
    assert tok.vocab[:7] == SPECIALS and "Cl" in tok.vocab
    out = tok.batch_encode(["CCO", "c1ccccc1Cl", " C "], add_cls=True, add_eos=True)
    assert out["input_ids"].shape == (3, 11)
    assert out["attention_mask"].sum(1).tolist() == [5, 11, 3]
    assert out["input_ids"][2, :3].tolist() == [0, tok.token_to_id("C"), 1]
    with pytest.raises(TokenizerError, match="duplicate"):
        SmilesTokenizer(["C", "C"])


# ------------------------------------------------------------------------------------------- config, files
@pytest.mark.parametrize("tok, text", [(DnaTokenizer(iupac="error", unknown="unk", u_to_t=False), "ACGTN"),
                                       (ProteinTokenizer(strip_gaps=True), "MK-V"),
                                       (SmilesTokenizer.build(["CCO"]), "OCC")],
                         ids=["dna", "protein", "smiles"])
def test_config_and_file_round_trips(tok, text, tmp_path):
    config = tok.to_dict()
    json.dumps(config)
    for rebuilt in (tokenizer_from_config(config), type(tok).from_dict(config),
                    pickle.loads(pickle.dumps(tok))):
        assert type(rebuilt) is type(tok) and rebuilt.to_dict() == config
    tok.save(tmp_path / "t.json")
    assert get_tokenizer(str(tmp_path / "t.json")).to_dict() == config
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok)).encode(text), tok.encode(text))


def test_factory_and_bad_configs(tmp_path):
    assert isinstance(get_tokenizer("DNA"), DnaTokenizer)
    assert get_tokenizer("protein", strip_gaps=True).strip_gaps
    assert isinstance(get_tokenizer("smiles"), SmilesTokenizer)
    assert tokenizer_from_config({"name": "dna", "iupac": "unk"}).iupac == "unk"
    assert isinstance(tokenizer_from_config({"alphabet": "protein"}), ProteinTokenizer)
    # flat keys beside a saved config override its options (bioseq embed --unknown does this)
    smiles = SmilesTokenizer.build(["CCO"])
    assert tokenizer_from_config({**smiles.to_dict(), "unknown": "error"}).unknown == "error"
    lenient = tokenizer_from_config({**DnaTokenizer().to_dict(), "unknown": "unk"})
    with pytest.warns(UserWarning, match="UNK"):
        assert lenient.encode("AX").tolist() == [7, 6]
    with pytest.raises(TokenizerError, match="unknown tokenizer 'rna'"):
        get_tokenizer("rna")
    with pytest.raises(ValueError):
        DnaTokenizer(iupac="x")
    with pytest.raises(TokenizerError, match="bad dna tokenizer options"):
        tokenizer_from_config({"name": "dna", "iupac": "x"})
    with pytest.raises(TokenizerError, match="bad protein tokenizer options"):
        tokenizer_from_config({"name": "protein", "version": 1, "vocab": None, "options": {"colour": 1}})
    bad = DnaTokenizer().to_dict()
    bad["vocab"] = bad["vocab"][::-1]
    with pytest.raises(TokenizerError, match="differs"):
        tokenizer_from_config(bad)
    with pytest.raises(TokenizerError, match="not 'dna'"):
        DnaTokenizer.from_dict(ProteinTokenizer().to_dict())
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"broken.json:1: not valid JSON"):
        load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(tmp_path / "missing.json")



BENCH_ARGS = ["--mb", "0.3", "--baseline-mb", "0.05", "--window", "100000", "--repeats", "1"]


def test_benchmark_main_prints_table(capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tokenizer_speed.py"
    spec = importlib.util.spec_from_file_location("bioseq_benchmark_tokenize", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(BENCH_ARGS)
    out = capsys.readouterr().out
    assert rc in (0, 1)
    assert "dna encode, 0.1 Mb windows" in out and "protein batch_encode" in out
    assert out.count("PASS") + out.count("FAIL") == 5  # 4 goal/info lines + RESULT


@pytest.mark.slow
def test_benchmark_script_runs_as_a_script(tmp_path):
    """``python benchmarks/tokenizer_speed.py`` runs as a script, from any directory."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tokenizer_speed.py"
    proc = subprocess.run([sys.executable, str(script), *BENCH_ARGS], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    assert "RESULT:" in proc.stdout
