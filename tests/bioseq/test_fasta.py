"""bioseq.fasta: streaming, indexed access, and the defined behaviour on bad input (API level).

The CLI side of the bad-input list (exit 2, one stderr line) is in test_inspect.py.
"""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import pickle
import random
import stat

import pytest

from bioseq import fasta
from bioseq.errors import BioseqError
from bioseq.fasta import (
    TINY_FASTA,
    FastaCharacterError,
    FastaCompressionError,
    FastaDuplicateError,
    FastaError,
    FastaFileError,
    FastaFormatError,
    FastaIndexError,
    IndexedFasta,
    detect_compression,
    ensure_index,
    read_fasta,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Index cache in the test's tmp dir, never in ~/.cache."""
    monkeypatch.setenv("BIOSEQ_CACHE", str(tmp_path / "cache"))


def _random_records(n=5, seed=0, min_len=1, max_len=700, alphabet="ACGTacgtN"):
    rng = random.Random(seed)
    return [(f"r{i}", f"desc {i}", "".join(rng.choices(alphabet, k=rng.randint(min_len, max_len))))
            for i in range(n)]


def _fasta_text(records, width=60, newline="\n"):
    out = []
    for rid, desc, seq in records:
        out.append(f">{rid} {desc}".rstrip() + newline)
        for i in range(0, len(seq), width):
            out.append(seq[i:i + width] + newline)
    return "".join(out)


def _write_bgzf(path, data: bytes, block=1000):
    """BGZF with small blocks (flushed every ``block`` bytes) so windows cross many block borders."""
    from Bio import bgzf

    with bgzf.BgzfWriter(str(path), "wb") as w:
        for i in range(0, len(data), block):
            w.write(data[i:i + block])
            w.flush()


# ------------------------------------------------------------------------------------------ streaming


def test_read_fasta_records_ids_descriptions_lines(tmp_path):
    p = tmp_path / "a.fa"
    p.write_text(">chr1 first one\nACGT\nacgtn\n\n>chr2\nTTTT  \n>chr3\tdesc with\ttabs\nGG\n")
    recs = list(read_fasta(p))
    assert [(r.id, r.description, r.seq, r.line) for r in recs] == [
        ("chr1", "first one", "ACGTacgtn", 1),
        ("chr2", "", "TTTT", 5),
        ("chr3", "desc with\ttabs", "GG", 7),
    ]
    assert list(read_fasta(p, as_bytes=True))[0].seq == b"ACGTacgtn"


def test_plain_gzip_bgzf_read_the_same_and_are_detected_by_magic(tmp_path):
    records = _random_records(6, seed=1)
    text = _fasta_text(records).encode()
    plain, gz, bgz = tmp_path / "x.gz", tmp_path / "x.fa", tmp_path / "x.txt"  # misleading names on purpose
    plain.write_bytes(text)
    gz.write_bytes(gzip.compress(text))
    _write_bgzf(bgz, text)
    assert [detect_compression(p) for p in (plain, gz, bgz)] == ["plain", "gzip", "bgzf"]
    want = [(rid, seq) for rid, _, seq in records]
    for p in (plain, gz, bgz):
        assert [(r.id, r.seq) for r in read_fasta(p)] == want


def test_crlf_line_endings_work(tmp_path):
    records = _random_records(3, seed=2, min_len=130)
    p = tmp_path / "crlf.fa"
    p.write_bytes(_fasta_text(records, newline="\r\n").encode())
    assert [(r.id, r.description, r.seq) for r in read_fasta(p)] == records
    # and for indexed access
    ix = IndexedFasta(p)
    for rid, _, seq in records:
        assert ix.fetch(rid, 0, len(seq)) == seq
        assert ix.fetch(rid, 59, min(125, len(seq))) == seq[59:125]


def test_single_line_record_and_no_final_newline(tmp_path):
    p = tmp_path / "one.fa"
    seq = "ACGT" * 50_000
    p.write_text(">big\n" + seq)  # one 200 kb line, no trailing newline
    assert next(read_fasta(p)).seq == seq
    ix = IndexedFasta(p)
    assert ix.lengths == {"big": 200_000}
    assert ix.fetch("big", 199_990, 200_000) == seq[-10:]


def test_alphabet_validation(tmp_path):
    p = tmp_path / "a.fa"
    p.write_text(">ok\nACGTNRYKMacgtn\n>bad\nACGT\nACJT\n")
    assert len(list(read_fasta(p))) == 2  # no alphabet: anything printable goes
    with pytest.raises(FastaCharacterError) as e:
        list(read_fasta(p, alphabet="dna"))
    err = e.value
    assert (err.path, err.record, err.line, err.position) == (str(p), "bad", 5, 7)
    assert "'J'" in str(err) and "DNA" in str(err)
    assert len(list(read_fasta(p, alphabet="protein"))) == 2
    with pytest.raises(ValueError):
        list(read_fasta(p, alphabet="rna"))


# ------------------------------------------------------------------------------------------ bad input


def _err(tmp_path, content: bytes, name="bad.fa", **kw) -> FastaError:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(FastaError) as e:
        list(read_fasta(p, **kw))
    assert isinstance(e.value, BioseqError)
    assert e.value.path == str(p)
    assert "\n" not in str(e.value)
    return e.value


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FastaFileError, match="no such file"):
        list(read_fasta(tmp_path / "nope.fa"))
    with pytest.raises(FastaFileError, match="directory"):
        list(read_fasta(tmp_path))


def test_empty_file(tmp_path):
    assert "empty file" in str(_err(tmp_path, b""))
    assert "empty file" in str(_err(tmp_path, b"\n\n  \n"))
    assert "empty file" in str(_err(tmp_path, gzip.compress(b""), name="e.fa.gz"))


def test_text_before_first_header(tmp_path):
    err = _err(tmp_path, b"\n# a comment\n>r1\nACGT\n")
    assert isinstance(err, FastaFormatError) and err.line == 2 and "before the first '>'" in str(err)


def test_bom_and_leading_blank_lines_are_accepted(tmp_path):
    p = tmp_path / "bom.fa"
    p.write_bytes(b"\xef\xbb\xbf>r1 d\nACGT\nAC\n>r2\nGG\n")
    assert [(r.id, r.seq) for r in read_fasta(p)] == [("r1", "ACGTAC"), ("r2", "GG")]
    assert IndexedFasta(p).fetch("r1", 2, 6) == "GTAC"
    q = tmp_path / "blank.fa"
    q.write_bytes(b"\n\n>r1\nACGT\nAC\n")
    assert IndexedFasta(q).fetch("r1", 3, 6) == "TAC"


def test_header_without_id(tmp_path):
    err = _err(tmp_path, b">r1\nAC\n>\nGT\n")
    assert err.line == 3 and "no id" in str(err)


def test_empty_record_is_an_error_unless_skipped(tmp_path):
    content = b">r1\nACGT\n>empty desc\n>r3\nGG\n"
    err = _err(tmp_path, content)
    assert isinstance(err, FastaFormatError) and (err.record, err.line) == ("empty", 3)
    assert "skip_empty" in str(err)
    assert [r.id for r in read_fasta(tmp_path / "bad.fa", skip_empty=True)] == ["r1", "r3"]
    err = _err(tmp_path, b">r1\nACGT\n>last\n\n")  # empty last record
    assert err.record == "last"


def test_duplicate_ids_are_an_error_unless_allowed(tmp_path):
    err = _err(tmp_path, b">a\nAC\n>b x\nGT\n>b y\nTT\n")
    assert isinstance(err, FastaDuplicateError)
    assert (err.record, err.line) == ("b", 5) and "line 3" in str(err)
    recs = list(read_fasta(tmp_path / "bad.fa", allow_duplicates=True))
    assert [(r.id, r.description) for r in recs] == [("a", ""), ("b", "x"), ("b", "y")]


def test_cr_only_line_endings(tmp_path):
    err = _err(tmp_path, b">r1 mac\rACGT\rACGT\r")
    assert isinstance(err, FastaFormatError) and "old Mac line endings" in str(err)
    assert (err.record, err.line) == ("r1", 1)


def test_truncated_gzip(tmp_path):
    text = _fasta_text(_random_records(40, seed=3, min_len=500, max_len=2000)).encode()
    data = gzip.compress(text)
    err = _err(tmp_path, data[: len(data) // 2], name="trunc.fa.gz")
    assert isinstance(err, FastaCompressionError) and "truncated gzip" in str(err)
    assert err.record is not None and err.line > 1


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(_fasta_text(_random_records(5, seed=3)).encode()))
    data[30:40] = b"\xff" * 10
    err = _err(tmp_path, bytes(data), name="corrupt.fa.gz")
    assert isinstance(err, FastaCompressionError)


def test_unsupported_compression(tmp_path):
    import bz2

    err = _err(tmp_path, bz2.compress(b">r\nACGT\n"), name="x.fa.bz2")
    assert isinstance(err, FastaCompressionError) and "bzip2" in str(err)


def test_non_ascii_in_sequence(tmp_path):
    err = _err(tmp_path, ">r1\nACGT\n>r2 ok é header\nACGT\nACé\n".encode())
    assert isinstance(err, FastaCharacterError) and "non-ASCII byte 0xc3" in str(err)
    assert (err.record, err.line, err.position) == ("r2", 5, 7)


def test_utf8_header_is_fine_but_invalid_utf8_header_is_not(tmp_path):
    p = tmp_path / "h.fa"
    p.write_bytes(">r1 Müller strain\nACGT\n".encode())
    assert next(read_fasta(p)).description == "Müller strain"
    err = _err(tmp_path, b">r1 \xff\xfe\nACGT\n")
    assert err.line == 1 and "UTF-8" in str(err)


def test_binary_file(tmp_path):
    err = _err(tmp_path, bytes(range(256)) * 8, name="model.bin")
    assert isinstance(err, FastaFormatError) and "binary" in str(err) and err.line == 1
    err = _err(tmp_path, b">r1\nACGT\nAC\x00\x01GT\n")  # control bytes inside a record
    assert isinstance(err, FastaCharacterError) and (err.record, err.line, err.position) == ("r1", 3, 7)


# ------------------------------------------------------------------------------------------ index


def test_indexed_fetch_matches_streaming_plain(tmp_path):
    records = _random_records(8, seed=4, max_len=1500)
    p = tmp_path / "g.fa"
    p.write_text(_fasta_text(records, width=70))
    ix = IndexedFasta(p)
    assert ix.names == [r[0] for r in records]
    assert ix.lengths == {rid: len(seq) for rid, _, seq in records}
    assert ix.fai_path == tmp_path / "g.fa.fai" and ix.gzi_path is None  # writable dir: next to it
    rng = random.Random(0)
    for _ in range(300):
        rid, _, seq = rng.choice(records)
        a = rng.randint(0, len(seq))
        b = rng.randint(a, len(seq))
        assert ix.fetch(rid, a, b) == seq[a:b]
    assert ix.fetch(records[0][0]) == records[0][2]


def test_indexed_bgzf_across_block_borders(tmp_path):
    records = _random_records(6, seed=5, min_len=2500, max_len=3000)
    text = _fasta_text(records).encode()
    p = tmp_path / "g.fa.gz"
    _write_bgzf(p, text, block=997)
    fai, gzi = ensure_index(p)
    assert fai == tmp_path / "g.fa.gz.fai" and gzi == tmp_path / "g.fa.gz.gzi"
    ix = IndexedFasta(p)
    seqs = {rid: seq for rid, _, seq in records}
    rng = random.Random(1)
    for _ in range(300):
        rid = rng.choice(ix.names)
        n = ix.lengths[rid]
        a = rng.randint(0, n)
        b = rng.randint(a, min(n, a + rng.choice([1, 10, 2000])))
        assert ix.fetch(rid, a, b) == seqs[rid][a:b]
    # windows that start exactly on block borders (in bases of the first record)
    header = len(f">{records[0][0]} {records[0][1]}\n")
    for border in range(997, 2000, 997):
        pos = border - header
        base = pos - pos // 61  # 60 bases + newline per line
        assert ix.fetch(records[0][0], base, base + 50) == records[0][2][base:base + 50]


def test_bgzf_without_gz_suffix_is_indexed_through_a_link(tmp_path):
    records = _random_records(3, seed=6, min_len=300)
    p = tmp_path / "genome.fasta"  # BGZF bytes, no .gz name
    _write_bgzf(p, _fasta_text(records).encode(), block=500)
    ix = IndexedFasta(p)
    assert ix.fetch("r1", 10, 200) == records[1][2][10:200]


def test_index_is_built_once(tmp_path, monkeypatch):
    p = tmp_path / "g.fa"
    p.write_text(_fasta_text(_random_records(3, seed=7)))
    calls = []
    real = fasta._build_fai
    monkeypatch.setattr(fasta, "_build_fai", lambda path: calls.append(path) or real(path))
    IndexedFasta(p)
    IndexedFasta(p)
    assert ensure_index(p) == IndexedFasta.ensure_index(p) == (tmp_path / "g.fa.fai", None)
    assert len(calls) == 1
    os.utime(p, (p.stat().st_atime, p.stat().st_mtime + 10))  # the FASTA changed: rebuild
    IndexedFasta(p)
    assert len(calls) == 2


def test_read_only_input_indexes_into_the_cache(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    records = _random_records(3, seed=8, min_len=200)
    p, b = data / "g.fa", data / "g.bgz.fa.gz"
    p.write_text(_fasta_text(records))
    _write_bgzf(b, _fasta_text(records).encode(), block=400)
    data.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        for path in (p, b):
            ix = IndexedFasta(path)
            assert ix.fai_path.is_relative_to(tmp_path / "cache" / "fai")
            assert ix.fetch("r2", 5, 150) == records[2][2][5:150]
        assert sorted(x.name for x in data.iterdir()) == ["g.bgz.fa.gz", "g.fa"]  # nothing written there
        first = IndexedFasta(p).fai_path
        mtime = first.stat().st_mtime_ns
        assert IndexedFasta(p).fai_path == first and first.stat().st_mtime_ns == mtime  # reused
    finally:
        data.chmod(0o755)


def test_unwritable_cache_is_a_one_line_error(tmp_path, monkeypatch):
    data = tmp_path / "ro"
    data.mkdir()
    (data / "g.fa").write_text(">a\nACGT\n")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("BIOSEQ_CACHE", str(blocker))
    data.chmod(0o555)
    try:
        with pytest.raises(FastaIndexError, match="set BIOSEQ_CACHE to a writable directory"):
            IndexedFasta(data / "g.fa")
    finally:
        data.chmod(0o755)


def test_plain_gzip_cannot_be_indexed(tmp_path):
    p = tmp_path / "g.fa.gz"
    p.write_bytes(gzip.compress(b">r\nACGT\n"))
    with pytest.raises(FastaCompressionError, match="compress with bgzip or decompress"):
        IndexedFasta(p)


@pytest.mark.parametrize("lines,bad_line", [
    (["ACGTACGT", "ACGT", "ACGTACGT"], 6),        # short line in the middle
    (["ACGTACGT", "ACGTACGTAA", "AC"], 6),        # longer line
    (["ACGTACGT", "", "ACGTACGT"], 6),            # blank line inside the record
    (["ACGTACGT", "ACGTACGT  ", "AC"], 6),        # trailing blanks
], ids=["short", "long", "blank", "trailing-blanks"])
def test_ragged_lines_cannot_be_indexed(tmp_path, lines, bad_line):
    p = tmp_path / "r.fa"
    p.write_text(">ok\nACGTACGT\nAC\n>rag desc\n" + "\n".join(lines) + "\n")
    # header "rag" is on line 4: its sequence lines are 5, 6, 7
    with pytest.raises(FastaIndexError) as e:
        IndexedFasta(p)
    assert (e.value.record, e.value.line) == ("rag", bad_line)
    assert "ragged line lengths" in str(e.value)
    assert [r.id for r in read_fasta(p)] == ["ok", "rag"]  # streaming still works


def test_mixed_line_endings_cannot_be_indexed(tmp_path):
    p = tmp_path / "m.fa"
    p.write_bytes(b">m\r\nACGT\r\nACGT\nAC\r\n")
    with pytest.raises(FastaIndexError) as e:
        IndexedFasta(p)
    assert (e.value.record, e.value.line) == ("m", 3)


def test_trailing_blank_lines_and_short_last_line_are_indexable(tmp_path):
    p = tmp_path / "t.fa"
    p.write_text(">a\nACGTAC\nGT\n\n\n>b\nTTTTTT\nTT\n")
    ix = IndexedFasta(p)
    assert ix.fetch("a") == "ACGTACGT" and ix.fetch("b", 4, 8) == "TTTT"


def test_index_errors_duplicates_empty_and_bounds(tmp_path):
    p = tmp_path / "d.fa"
    p.write_text(">a\nAC\n>a\nGT\n")
    with pytest.raises(FastaDuplicateError):
        IndexedFasta(p)
    q = tmp_path / "e.fa"
    q.write_text(">a\nACGT\n>empty\n>c\nGG\n")
    with pytest.raises(FastaFormatError) as e:
        IndexedFasta(q)
    assert e.value.record == "empty"
    ix = IndexedFasta(q, skip_empty=True)
    assert ix.names == ["a", "c"] and ix.fetch("c") == "GG"
    with pytest.raises(FastaIndexError, match="outside"):
        ix.fetch("a", 2, 5)
    with pytest.raises(FastaIndexError, match="no such record"):
        ix.fetch("zz", 0, 1)
    assert ix.fetch("a", 3, 3) == ""


def _child_fetch(ix):
    return ix.fetch("r3", 100, 400), ix._pid == os.getpid()


def test_handle_reopens_after_fork_and_pickles(tmp_path):
    records = _random_records(5, seed=9, min_len=500, max_len=900)
    p = tmp_path / "f.fa.gz"
    _write_bgzf(p, _fasta_text(records).encode(), block=700)
    ix = IndexedFasta(p)
    assert ix.fetch("r0", 0, 50) == records[0][2][:50]  # opens the handle in the parent
    parent_handle = ix._faidx
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_child_fetch, [ix] * 4)  # pickled -> handle dropped; reopened per worker
    assert all(r == (records[3][2][100:400], True) for r in results)
    clone = pickle.loads(pickle.dumps(ix))
    assert clone._faidx is None and clone.fetch("r4", 1, 9) == records[4][2][1:9]
    # same object after a real fork (no pickling): the pid check must reopen
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        ok = ix._faidx is parent_handle and ix.fetch("r2", 7, 77) == records[2][2][7:77] \
            and ix._faidx is not parent_handle
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert ix._faidx is parent_handle


# ------------------------------------------------------------------------------------------ bundled + real


def test_bundled_tiny_fasta():
    recs = list(read_fasta(TINY_FASTA, alphabet="dna"))
    assert [r.id for r in recs] == ["chr1", "chr2", "plasmid"]
    assert [len(r) for r in recs] == [1200, 800, 300]
    assert TINY_FASTA.stat().st_size < 5000


def test_real_ecoli_genome(shared):
    (rec,) = list(read_fasta(shared("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"),
                             alphabet="dna"))
    assert rec.id == "NC_000913.3" and len(rec.seq) == 4_641_652
    assert rec.description.startswith("Escherichia coli str. K-12 substr. MG1655")


def test_real_proteome(shared):
    recs = list(read_fasta(shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz"),
                           alphabet="protein", as_bytes=True))
    assert len(recs) == 4298
    assert sum(r.seq.count(b"U") for r in recs) == 3
    assert min(map(len, recs)) == 8 and max(map(len, recs)) == 2358


def test_real_bgzf_read_only_indexed_and_single_line_chromosome(shared):
    path = shared("data", "genome", "sacCer3_17x10kb.bgzf.fa.gz")
    assert detect_compression(path) == "bgzf"
    streamed = {r.id: r.seq for r in read_fasta(path)}
    ix = IndexedFasta(path)  # ../shared is read-only: the index goes to $BIOSEQ_CACHE
    assert not ix.fai_path.is_relative_to(path.parent)
    assert len(ix) == 17 and set(ix.lengths.values()) == {10_000}
    assert ix.names == list(streamed)
    for name in ix.names:
        assert ix.fetch(name, 1234, 5678) == streamed[name][1234:5678]
    single = shared("data", "genome", "sacCer3_chrIV_singleline.fa.gz")
    (rec,) = list(read_fasta(single))
    assert len(rec.seq) == 1_531_933
    with pytest.raises(FastaCompressionError, match="bgzip"):
        IndexedFasta(single)


def test_index_build_validates_long_records_in_pieces(tmp_path):
    """Index building checks a long record piece by piece (it never holds it whole) and still
    names the exact line and position of a bad byte far into the record."""
    n_lines, bad_line = 70_000, 69_001  # more lines than one validation piece
    body = [b"ACGTACGTAC"] * n_lines
    body[bad_line - 1] = b"ACG\x80ACGTAC"
    path = tmp_path / "long.fa"
    path.write_bytes(b">chrL\n" + b"\n".join(body) + b"\n")
    with pytest.raises(FastaError) as err:
        fasta.ensure_index(path)
    assert err.value.line == bad_line + 1  # the header is line 1
    assert f"position {(bad_line - 1) * 10 + 4}" in str(err.value)
    body[bad_line - 1] = b"ACGTACGTAC"
    path.write_bytes(b">chrL\n" + b"\n".join(body) + b"\n")
    assert IndexedFasta(path).lengths == {"chrL": n_lines * 10}
