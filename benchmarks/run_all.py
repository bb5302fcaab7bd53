"""One performance report: every benchmark script in a quick mode, one dated table per model family.

    python benchmarks/run_all.py                     # quick mode (about 10-20 minutes on 2 cores)
    python benchmarks/run_all.py --only mamba xlstm  # a subset
    python benchmarks/run_all.py --full              # each script's own defaults (long)

Each section runs one script in a subprocess (one CPU thread unless the script says otherwise) and
keeps what it printed: HyenaDNA, Mamba and xLSTM forward / forward+backward seconds and peak RSS at
several lengths (beside the reference implementation when one is installed: ``--official`` for the
HyenaDNA repository's standalone file, ``--hf-python`` for a Python with transformers, ``--xlstm-python``
for one with the ``xlstm`` package), the fused ops against their references, tokenizer and data
loader throughput, and ``bioseq embed`` sequences per second.

The report goes to ``benchmarks/reports/<date>.md`` and replaces the block between the
``run_all`` markers in ``benchmarks/RESULTS.md`` (which keeps the latest). A script that fails or
runs out of time is reported as such; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"


def sections(a: argparse.Namespace) -> list[tuple[str, str, list[str], int]]:
    """(key, title, arguments after the script path, time limit in seconds) per section."""
    quick = not a.full
    hyena = ["hyena.py", "--threads", "1"]
    hyena += ["--lengths", "1024", "4096", "--repeats", "1"] if quick else []
    if a.official:
        hyena += ["--official", a.official]
    mamba = ["mamba.py"] + (["--lengths", "1024", "4096", "--repeats", "1", "--step-tokens", "64"]
                            if quick else [])
    mamba += ["--hf-python", a.hf_python] if a.hf_python else ["--hf-lengths"]
    xlstm = ["xlstm.py", "--reference-python", a.xlstm_python or "/nonexistent"]
    xlstm += ["--lengths", "1024", "4096"] if quick else []
    return [
        ("hyena", "HyenaDNA (tiny-1k shape, B=2, one thread)", hyena, 1200),
        ("mamba", "Mamba-1 / Mamba-2 (d_model 256, 4 layers, d_state 16, B=2, one thread)", mamba, 1800),
        ("xlstm", "xLSTM (d_model 128, 4 mLSTM blocks, B=2, one thread)", xlstm, 1800),
        ("ops", "Fused ops: fftconv, causal_conv1d (CPU torch paths)",
         ["ops.py"] + (["--lengths", "1024,4096", "--repeats", "2"] if quick else []), 900),
        ("ops_mamba", "Fused ops: selective_scan, ssd (CPU paths vs the spec)",
         ["ops_mamba.py"] + (["--lengths", "1024", "--repeats", "2"] if quick else []), 900),
        ("tokenizer", "Tokenizer throughput",
         ["tokenizer_speed.py"] + (["--mb", "8", "--baseline-mb", "1", "--repeats", "1"] if quick else []),
         600),
        ("loader", "Genome data loader throughput",
         ["dataloader.py"] + (["--sizes", "20", "--lengths", "1024", "--tokens", "1000000"] if quick else []),
         900),
        ("embed", "bioseq embed: E. coli proteins, engine vs one-at-a-time loop",
         ["embed.py", "proteins"] + (["--limit", "500", "--threads", "1"] if quick else []), 900),
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def run_section(script_args: list[str], limit: int) -> tuple[str, float, int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, str(HERE / script_args[0]), *script_args[1:]], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=limit)
        out, rc = res.stdout + (("\n" + res.stderr[-3000:]) if res.returncode else ""), res.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n(timed out after {limit} s)"
        rc = 124
    return out.rstrip(), time.perf_counter() - t0, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", help="section keys to run (default: all)")
    p.add_argument("--full", action="store_true", help="each script's default sizes, not the quick mode")
    p.add_argument("--official", help="the HyenaDNA repository's standalone_hyenadna.py (outside the repo)")
    p.add_argument("--hf-python", help="a Python with transformers, for Mamba's reference slow path")
    p.add_argument("--xlstm-python", help="a Python with the xlstm package, for xLSTM's reference backend")
    p.add_argument("--reports", default=str(HERE / "reports"), help="folder of the dated reports")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' = do not)")
    a = p.parse_args(argv)
    chosen = [s for s in sections(a) if not a.only or s[0] in a.only]
    unknown = set(a.only or ()) - {s[0] for s in sections(a)}
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(s[0] for s in sections(a))}")
    today = dt.date.today().isoformat()
    lines = [f"## Performance report {today} ({'full' if a.full else 'quick'} mode)", "",
             f"Machine: {machine()}.", "Command: `python benchmarks/run_all.py "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "`", ""]
    failed = 0
    for key, title, args, limit in chosen:
        print(f"== {key}: {' '.join(args)}", flush=True)
        out, seconds, rc = run_section(args, limit)
        status = "ok" if rc == 0 else f"exit {rc}: a goal the script checks was missed, or it failed"
        failed += rc != 0
        print(out, flush=True)
        print(f"-- {key}: {status}, {seconds:.0f} s", flush=True)
        lines += [f"### {title}", "", f"`python benchmarks/{' '.join(args)}` ({status}, {seconds:.0f} s)", "",
                  "```", out, "```", ""]
    report = "\n".join(lines) + "\n"
    Path(a.reports).mkdir(parents=True, exist_ok=True)
    path = Path(a.reports) / f"{today}.md"
    path.write_text(report)
    print(f"report: {path}")
    if a.results:
        results = Path(a.results)
        text = results.read_text() if results.exists() else ""
        block = f"{BEGIN}\n{report}{END}"
        if BEGIN in text and END in text:
            text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        results.write_text(text)
        print(f"updated: {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
