"""xLSTM on one CPU thread: forward + backward seconds and peak memory against sequence length, and the
recurrent step (ms per token), beside the ``xlstm`` package's default backend where it is installed.

    python benchmarks/xlstm.py                                   # S = 1024, 4096, 16384
    python benchmarks/xlstm.py --lengths 1024 4096 --reference-python /tmp/xvenv/bin/python

Model: d_model 128, 4 mLSTM blocks (4 heads, inner width 256, conv 4, qkv blocks of 4), vocabulary 12,
batch 2, float32, ``torch.set_num_threads(1)``. Every point runs in a fresh child process that imports
everything, records its RSS (``ru_maxrss``) after building the model and the input, then times forward +
backward (LM head and next-token cross-entropy included) after one untimed warm-up pass of the same size.
Reported: wall and CPU seconds of the fastest of ``--repeats`` timed passes (one for the package: it is
slow; CPU seconds are the fairer figure on a busy machine) and
the peak RSS of the process (``ru_maxrss``, which includes the interpreter, torch and the model: about
0.25 GB before the first pass).

bioseq runs the chunkwise mLSTM (``bioseq.ops.mlstm``, chunk 64: memory linear in S). The ``xlstm``
package (2.0.6, ``xLSTMLMModel``) runs its default parallel backend, whose [S, S] decay and score
matrices make time and memory quadratic in S; it is skipped where its estimated memory would exceed
``--reference-max-gb`` (default 16), and when ``--reference-python`` cannot import ``xlstm``.

Host memory: every child first calls ``bioseq.host_memory.keep_freed_memory()``, as the ``bioseq``
console script does (glibc reuses freed large blocks instead of mapping and faulting them in again each
pass; at S = 16384 that was a third of the step), the ``--malloc steady`` of ``benchmarks/hyena.py``.
``--malloc default`` keeps glibc's defaults.

Step: ms per token of ``step`` with B = 2 for the same width: the ``slstm_step`` op alone (4 heads of
32), a model of 4 sLSTM blocks and a model of 4 mLSTM blocks (bioseq), and ``xLSTMLMModel.step`` of the
package with 4 sLSTM blocks (vanilla backend) where installed.

Goal (issue 14): bioseq at S = 4096 takes <= 1.5 s and <= 2 GB, and grows linearly from 4k to 16k.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
D_MODEL, N_LAYER, BATCH, VOCAB = 128, 4, 2, 12


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------------------------------- children


def apply_malloc(mode: str) -> None:
    """``steady``: bioseq's host-memory setting, loaded from its file so the reference interpreter (which
    has no bioseq) gets the same allocator behaviour."""
    if mode == "steady":
        spec = importlib.util.spec_from_file_location("_host_memory", REPO / "bioseq" / "host_memory.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.keep_freed_memory()


def _best_of(fn, repeats: int) -> tuple[float, float, float]:
    """(wall, CPU, system) seconds of the fastest of ``repeats`` calls: the least disturbed by other load.
    The CPU time (user + system) of this one-thread process leaves out the time it waited for a core on a
    busy machine; the system part is mostly page faults of freshly mapped large tensors."""
    best = (float("inf"), float("inf"), float("inf"))
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), os.times()
        fn()
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        best = min(best, (time.perf_counter() - t0, cpu, c1.system - c0.system))
    return best


def child_bioseq(length: int, repeats: int = 1) -> dict:
    import torch
    import torch.nn.functional as F

    from bioseq.models.xlstm import XLSTM, XLSTMConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = XLSTM(XLSTMConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, chunk_size=64))
    ids = torch.randint(7, 11, (BATCH, length))

    def fwd_bwd():
        logits = model.lm_logits(model(ids))
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()

    base = peak_rss_mb()
    fwd_bwd()
    wall, cpu, system = _best_of(fwd_bwd, repeats)
    return {"seconds": wall, "cpu_seconds": cpu, "system_seconds": system, "peak_rss_mb": peak_rss_mb(),
            "base_rss_mb": base}


def _import_package():
    """Import the ``xlstm`` package, not this file (its folder is first on sys.path when run as a script)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import xlstm

    return xlstm


def _package_model(length: int, slstm: bool):
    _import_package()
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModel,
        xLSTMLMModelConfig,
    )

    cfg = xLSTMLMModelConfig(
        vocab_size=VOCAB, embedding_dim=D_MODEL, num_blocks=N_LAYER, context_length=length,
        mlstm_block=None if slstm else mLSTMBlockConfig(mlstm=mLSTMLayerConfig(
            conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4, proj_factor=2.0)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4,
                                                            conv1d_kernel_size=4),
                                     feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"))
        if slstm else None,
        slstm_at="all" if slstm else [],
    )
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    return model


def child_reference(length: int, repeats: int = 1) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _package_model(length, slstm=False)
    ids = torch.randint(7, 11, (BATCH, length))

    def fwd_bwd():
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()

    base = peak_rss_mb()
    fwd_bwd()
    wall, cpu, system = _best_of(fwd_bwd, repeats)
    return {"seconds": wall, "cpu_seconds": cpu, "system_seconds": system, "peak_rss_mb": peak_rss_mb(),
            "base_rss_mb": base}


def _time_steps(step, n: int = 200, warmup: int = 20) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1e3


def child_steps_bioseq() -> dict:
    import torch

    from bioseq.models.xlstm import XLSTM, XLSTMConfig
    from bioseq.ops.slstm import slstm_step, slstm_zero_state

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    NH, DH = 4, D_MODEL // 4
    R = torch.randn(NH, DH, 4 * DH) * 0.1
    b = torch.zeros(4, NH, DH)
    wx = torch.randn(BATCH, 4, NH, DH)
    state = [slstm_zero_state(BATCH, NH, DH)]

    def op_step():
        _, state[0] = slstm_step(wx, R, b, state[0])

    with torch.no_grad():
        out["slstm_step op"] = _time_steps(op_step, n=2000)
        for name, slstm_at in (("sLSTM model step (4 blocks)", list(range(N_LAYER))),
                               ("mLSTM model step (4 blocks)", [])):
            model = XLSTM(XLSTMConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, slstm_at=slstm_at))
            model.eval()
            st = [model.allocate_state(BATCH)]
            ids = torch.randint(7, 11, (BATCH,))

            def model_step(model=model, st=st, ids=ids):
                _, st[0] = model.step(ids, st[0])

            out[name] = _time_steps(model_step)
    return out


def child_steps_reference() -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _package_model(1024, slstm=True).eval()
    ids = torch.randint(7, 11, (BATCH, 1))
    st = [None]

    def step():
        _, st[0] = model.step(ids, st[0])

    with torch.no_grad():
        return {"sLSTM model step (4 blocks)": _time_steps(step)}


CHILDREN = {"bioseq": child_bioseq, "reference": child_reference}


# -------------------------------------------------------------------------------------------------- parent


def run_child(python: str, *args: str) -> dict | str:
    proc = subprocess.run([python, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"failed: {lines[-1] if lines else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_available(python: str | None) -> bool:
    if not python or not Path(python).exists():
        return False
    return subprocess.run([python, "-c", "import xlstm"], capture_output=True, cwd="/").returncode == 0


def reference_gb(length: int) -> float:
    """Rough peak memory of the package's parallel backend: ~23 float32 [B, NH, S, S] tensors alive at once
    (12.5 GB measured at S = 4096)."""
    return 23 * BATCH * 4 * length * length * 4 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--reference-python", default="/tmp/xvenv/bin/python",
                    help="an interpreter with the xlstm package installed (skipped when it has none)")
    ap.add_argument("--reference-max-gb", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per point (the fastest is reported)")
    ap.add_argument("--malloc", choices=["steady", "default"], default="steady",
                    help="steady: reuse freed large blocks as the bioseq CLI does; default: glibc's defaults")
    ap.add_argument("--child", choices=[*CHILDREN, "steps-bioseq", "steps-reference"], help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        apply_malloc(args.malloc)
        if args.child == "steps-bioseq":
            print(json.dumps(child_steps_bioseq()))
        elif args.child == "steps-reference":
            print(json.dumps(child_steps_reference()))
        else:
            print(json.dumps(CHILDREN[args.child](args.length, args.repeats)))
        return

    ref = reference_available(args.reference_python)
    print(f"xLSTM, d_model {D_MODEL}, {N_LAYER} mLSTM blocks, B={BATCH}, fp32, 1 thread; forward + backward")
    kept = "freed blocks kept (as the bioseq CLI)"
    print(f"host memory: {kept if args.malloc == 'steady' else 'glibc defaults'}")
    print(f"reference: {'xlstm package at ' + args.reference_python if ref else 'not installed (skipped)'}")
    print(f"{'S':>6}  {'bioseq s':>9}  {'CPU s':>9}  {'of it sys':>9}  {'peak MB':>9}  {'xlstm s':>9}  "
          f"{'CPU s':>9}  "
          f"{'peak MB':>9}")
    rows = {}
    for S in args.lengths:
        ours = run_child(sys.executable, "--child", "bioseq", "--length", str(S),
                         "--repeats", str(args.repeats), "--malloc", args.malloc)
        theirs: dict | str = "skipped"
        if ref and reference_gb(S) <= args.reference_max_gb:
            theirs = run_child(args.reference_python, "--child", "reference", "--length", str(S),
                               "--repeats", "1", "--malloc", args.malloc)
        elif ref:
            theirs = f"skipped (~{reference_gb(S):.0f} GB)"
        rows[S] = (ours, theirs)

        def cell(r, key, fmt):
            return format(r[key], fmt) if isinstance(r, dict) else "-"

        print(f"{S:>6}  {cell(ours, 'seconds', '9.2f')}  {cell(ours, 'cpu_seconds', '9.2f')}  "
              f"{cell(ours, 'system_seconds', '9.2f')}  "
              f"{cell(ours, 'peak_rss_mb', '9.0f')}  {cell(theirs, 'seconds', '9.2f')}  "
              f"{cell(theirs, 'cpu_seconds', '9.2f')}  {cell(theirs, 'peak_rss_mb', '9.0f')}"
              + ("" if isinstance(theirs, dict) else f"   xlstm: {theirs}")
              + ("" if isinstance(ours, dict) else f"   bioseq: {ours}"), flush=True)
    lengths = [S for S in args.lengths if isinstance(rows[S][0], dict)]
    for a, b in zip(lengths, lengths[1:]):
        ra, rb = rows[a][0], rows[b][0]
        grown = (rb["peak_rss_mb"] - rb["base_rss_mb"]) / max(ra["peak_rss_mb"] - ra["base_rss_mb"], 1.0)
        print(f"bioseq {a} -> {b} (x{b / a:g}): CPU time x{rb['cpu_seconds'] / ra['cpu_seconds']:.2f}, "
              f"memory above base x{grown:.2f}")
    print("\nstep, B=2, ms per token")
    steps = run_child(sys.executable, "--child", "steps-bioseq")
    ref_steps = run_child(args.reference_python, "--child", "steps-reference") if ref else {}
    if isinstance(steps, dict):
        for name, ms in steps.items():
            other = ref_steps.get(name) if isinstance(ref_steps, dict) else None
            print(f"  {name:<30} bioseq {ms:7.3f}" + (f"   xlstm {other:7.3f}" if other is not None else ""))
    else:
        print(f"  bioseq: {steps}")


if __name__ == "__main__":
    main()
