"""`bioseq inspect`: summaries, and issue 2's bad-input list through the CLI (exit 2, one stderr line)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bioseq.cli import main
from bioseq.fasta import TINY_FASTA


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOSEQ_DEBUG", raising=False)


def _json(capsys, *argv) -> list[dict]:
    assert main(["inspect", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------ summaries


def test_tiny_text_output(capsys):
    assert main(["inspect", str(TINY_FASTA)]) == 0
    out = capsys.readouterr().out
    assert "records           3" in out
    assert "total length      2,300 bp" in out
    assert "300 / 800.0 / 1,200 bp" in out
    assert "DNA (guessed)" in out
    assert "N fraction        0.021739 (50 N)" in out
    assert "R x1 (first at chr2:100), Y x1 (first at chr2:500)" in out


def test_tiny_json_and_per_record(capsys):
    (res,) = _json(capsys, "--per-record", str(TINY_FASTA))
    assert (res["records"], res["total_length"], res["min_length"], res["median_length"], res["max_length"]) \
        == (3, 2300, 300, 800.0, 1200)
    assert res["alphabet"] == "dna" and res["alphabet_guessed"]
    assert res["n_count"] == 50 and res["lowercase_count"] == 200
    assert res["iupac"] == [
        {"char": "R", "count": 1, "first_record": "chr2", "first_position": 100},
        {"char": "Y", "count": 1, "first_record": "chr2", "first_position": 500},
    ]
    assert res["invalid"] == [] and res["gaps"] == []
    rows = {r["id"]: r for r in res["per_record"]}
    assert rows["chr1"]["length"] == 1200 and rows["chr1"]["n_fraction"] == pytest.approx(50 / 1200)
    assert rows["chr1"]["lowercase_fraction"] == pytest.approx(200 / 1200)
    assert rows["chr2"]["iupac"] == "RY" and rows["plasmid"]["iupac"] == ""
    assert main(["inspect", "--per-record", str(TINY_FASTA)]) == 0
    table = capsys.readouterr().out
    assert "chr2" in table.split("lower")[1] and "RY" in table


def test_counts_match_a_plain_python_count(tmp_path, capsys):
    seq1 = "ACGTNNnnacgtRYK" * 7 + "J*-"
    seq2 = "ggggCCCC-." * 3 + "Q"
    p = tmp_path / "c.fa"
    p.write_text(f">a\n{seq1}\n>b\n{seq2}\n")
    (res,) = _json(capsys, "--alphabet", "dna", str(p))
    joined = (seq1 + seq2).upper()
    assert res["n_count"] == joined.count("N")
    assert res["lowercase_count"] == sum(c.islower() for c in seq1 + seq2)
    assert {i["char"]: i["count"] for i in res["iupac"]} == {"R": 7, "Y": 7, "K": 7}
    assert {i["char"]: (i["count"], i["first_record"], i["first_position"]) for i in res["invalid"]} == {
        "J": (1, "a", len(seq1) - 2), "*": (1, "a", len(seq1) - 1), "Q": (1, "b", len(seq2))}
    assert {i["char"]: i["count"] for i in res["gaps"]} == {"-": 4, ".": 3}
    assert res["composition"]["G"] == joined.count("G")


def test_protein_guess_and_classes(tmp_path, capsys):
    p = tmp_path / "p.faa"
    p.write_text(">p1 x\nMKVLAAGIUWQERTY*\n>p2\nMSTXXBZOPLKHHDE\n")
    (res,) = _json(capsys, str(p))
    assert res["alphabet"] == "protein" and res["n_fraction"] is None
    assert {i["char"] for i in res["iupac"]} == {"U", "X", "B", "Z", "O"}
    assert [i["char"] for i in res["gaps"]] == ["*"]
    assert res["invalid"] == []
    assert res["x_fraction"] == pytest.approx(2 / 31)


def test_invalid_dna_is_reported_then_strict_fails(tmp_path, capsys):
    p = tmp_path / "bad.fa"
    p.write_text(">ok\nACGT\n>chrX weird\nACGTACGT\nACGTAEGT\n")
    (res,) = _json(capsys, "--alphabet", "dna", str(p))
    assert res["invalid"] == [{"char": "E", "count": 1, "first_record": "chrX", "first_position": 14}]
    _expect_error(capsys, ["--alphabet", "dna", "--strict", str(p)], p, record="chrX", line=5,
                  words=["position 14", "invalid character 'E' for DNA"])
    _expect_error(capsys, ["--strict", str(p)], p, record="chrX", line=5)  # guessed alphabet


def test_crlf_works(tmp_path, capsys):
    p = tmp_path / "crlf.fa"
    p.write_bytes(b">a desc\r\nACGTACGT\r\nAC\r\n>b\r\nGGGG\r\n")
    (res,) = _json(capsys, "--index", "--per-record", str(p))
    assert [(r["id"], r["length"]) for r in res["per_record"]] == [("a", 10), ("b", 4)]
    assert res["invalid"] == [] and res["index"].endswith("crlf.fa.fai")


def test_flags_allow_duplicates_and_skip_empty(tmp_path, capsys):
    p = tmp_path / "d.fa"
    p.write_text(">a\nAC\n>a\nGG\n>e\n>c\nTT\n")
    (res,) = _json(capsys, "--allow-duplicates", "--skip-empty", str(p))
    assert res["records"] == 3 and res["total_length"] == 6


# ------------------------------------------------------------------------------------------ bad input


def _expect_error(capsys, argv, path, *, record=None, line=None, words=()):
    assert main(["inspect", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert "Traceback" not in err and captured.out == ""
    assert err.startswith("bioseq inspect: error: ")
    assert str(path) in err
    if record is not None:
        assert f"record '{record}'" in err
    if line is not None:
        assert f"{path}:{line}" in err
    for w in words:
        assert w in err, err
    return err


def _trunc_gzip() -> bytes:
    lines = "".join(f">r{i}\n" + "ACGT" * 300 + "\n" for i in range(200)).encode()
    data = gzip.compress(lines, compresslevel=1)
    return data[: len(data) * 2 // 3]


BAD = {
    # name: (file bytes or None, file name, record, line, words)
    "missing": (None, "missing.fa", None, None, ["no such file"]),
    "empty-file": (b"", "empty.fa", None, None, ["empty file"]),
    "text-before-header": (b"ACGT\n>r1\nACGT\n", "t.fa", None, 1, ["before the first '>'"]),
    "empty-record": (b">r1\nAC\n>r2 nothing\n>r3\nGG\n", "e.fa", "r2", 3, ["empty record", "--skip-empty"]),
    "duplicate-ids": (b">r1\nAC\n>r2\nGG\n>r1 again\nTT\n", "d.fa", "r1", 5,
                      ["duplicate record id", "line 1", "--allow-duplicates"]),
    "cr-only": (b">r1 x\rACGT\rAC\r", "mac.fa", "r1", 1, ["old Mac line endings"]),
    "truncated-gzip": (_trunc_gzip(), "trunc.fa.gz", None, None, ["truncated gzip"]),
    "non-ascii": (">r1\nACGT\n>r2\nACGTA\nAC\u00e9GT\n".encode(), "u.fa", "r2", 5,
                  ["non-ASCII byte 0xc3", "position 8"]),
    "binary": (bytes(range(256)) * 16, "weights.bin", None, 1, ["binary data"]),
    "control-bytes": (b">r1\nACGT\x00\x07ACGT\n", "nul.fa", "r1", 2, ["control byte 0x00", "position 5"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    content, name, record, line, words = BAD[case]
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    err = _expect_error(capsys, [str(p)], p, record=record, line=line, words=words)
    if case == "truncated-gzip":  # names the record and line reached
        assert "record 'r" in err and "after line" in err


def test_bad_input_directory(tmp_path, capsys):
    _expect_error(capsys, [str(tmp_path)], tmp_path, words=["is a directory"])


def test_bad_input_ragged_lines_for_indexed_access(tmp_path, capsys):
    p = tmp_path / "rag.fa"
    p.write_text(">a\nACGTACGT\nACGT\n>b desc\nACGTACGT\nACG\nACGTACGT\n")
    assert main(["inspect", str(p)]) == 0  # streaming does not care
    capsys.readouterr()
    _expect_error(capsys, ["--index", str(p)], p, record="b", line=6, words=["ragged line lengths"])


def test_bad_input_plain_gzip_for_indexed_access(tmp_path, capsys):
    p = tmp_path / "g.fa.gz"
    p.write_bytes(gzip.compress(b">a\nACGT\n"))
    _expect_error(capsys, ["--index", str(p)], p, words=["compress with bgzip or decompress"])


def _console_script() -> str:
    script = Path(sys.executable).with_name("bioseq")
    return str(script) if script.exists() else "bioseq"


def test_console_script_bad_input_and_debug_traceback(tmp_path):
    p = tmp_path / "dup.fa"
    p.write_text(">x\nACGT\n>x\nACGT\n")
    env = {k: v for k, v in os.environ.items() if k != "BIOSEQ_DEBUG"}
    env["BIOSEQ_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([_console_script(), "inspect", str(p)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{p}:3, record 'x': duplicate record id" in r.stderr
    r = subprocess.run([_console_script(), "inspect", str(p)], capture_output=True, text=True,
                       env={**env, "BIOSEQ_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "FastaDuplicateError" in r.stderr


# ------------------------------------------------------------------------------------------ real data


def test_real_ecoli_genome(shared, capsys):
    path = shared("data", "genome", "ecoli_k12_mg1655_GCF_000005845.2.fna.gz")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records           1\n" in out and "total length      4,641,652 bp" in out
    (res,) = _json(capsys, str(path))
    assert (res["records"], res["total_length"], res["alphabet"], res["n_count"]) == (1, 4_641_652, "dna", 0)
    assert res["gc_fraction"] == pytest.approx(0.5079, abs=1e-4)


def test_real_proteome(shared, capsys):
    (res,) = _json(capsys, str(shared("data", "protein", "ecoli_k12_proteome_GCF_000005845.2.faa.gz")))
    assert (res["records"], res["min_length"], res["max_length"]) == (4298, 8, 2358)
    assert res["alphabet"] == "protein" and res["invalid"] == []
    assert [(i["char"], i["count"]) for i in res["iupac"]] == [("U", 3)]


def test_real_genomes_iupac_n_runs_bgzf_single_line(shared, capsys):
    d = shared("data", "genome")
    files = ["athaliana_tair10_1pct.fa.gz", "dmel_r6.42_1pct.fa.gz", "sacCer3_17x10kb.bgzf.fa.gz",
             "sacCer3_chrIV_singleline.fa.gz"]
    at, dm, sc, iv = _json(capsys, *[str(d / f) for f in files])
    assert at["total_length"] == 1_196_674 and at["n_count"] == 2220
    assert {i["char"]: i["count"] for i in at["iupac"]} == {"K": 3, "Y": 1, "S": 1}
    assert all(i["first_record"] for i in at["iupac"])
    assert dm["total_length"] == 1_375_477 and dm["n_count"] == 17_972
    assert (sc["compression"], sc["records"], sc["total_length"]) == ("bgzf", 17, 170_000)
    assert (iv["records"], iv["total_length"]) == (1, 1_531_933)


def test_real_alignment(shared, capsys):
    (res,) = _json(capsys, str(shared("data", "protein", "DHFR_ecoli_homologs_plmc.a2m.gz")))
    assert (res["records"], res["min_length"], res["max_length"]) == (3629, 171, 171)
    assert [(i["char"], i["count"]) for i in res["iupac"]] == [("X", 18)]
    assert [i["char"] for i in res["gaps"]] == ["-"] and res["invalid"] == []
