"""ssd: the spec vs a float64 closed form, the chunked path vs the spec (outputs and all gradients),
chunk-size independence, state passing and the one-token update; the Triton path vs the spec and dispatch.

Kernel tests (``test_kernel_*``) run on CUDA when there is a GPU, else under Triton's interpreter on CPU;
see tests/ops/test_fftconv.py for why a fresh process is used when triton was imported without it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioseq.ops import ssd as ssd_pkg
from bioseq.ops.ssd import ssd, ssd_backend, ssd_chunked, ssd_ref, ssd_state_update
from tests.ops.kernel_env import (
    DEVICE,
    DTYPE_IDS,
    KERNEL_DTYPES,
    KERNELS_HERE,
    needs_kernels,
    run_kernel_tests_in_fresh_process,
    tl,
)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def make_inputs(batch=2, L=9, H=4, P=3, G=2, N=5, dtype=torch.float32, state=False, D="head", z=True,
                requires_grad=False):
    """Random ssd arguments (D: "head" -> [H], "channel" -> [H, P], None)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    args = dict(
        x=torch.randn(batch, L, H, P, dtype=dtype),
        dt=torch.randn(batch, L, H, dtype=dtype) * 0.5,
        A=-torch.rand(H, dtype=pdt) * 2 - 0.1,
        B=torch.randn(batch, L, G, N, dtype=dtype),
        C=torch.randn(batch, L, G, N, dtype=dtype),
        dt_bias=torch.randn(H, dtype=pdt) * 0.3,
    )
    if D is not None:
        args["D"] = torch.randn(H, dtype=pdt) if D == "head" else torch.randn(H, P, dtype=pdt)
    if z:
        args["z"] = torch.randn(batch, L, H, P, dtype=dtype)
    if state:
        args["initial_state"] = torch.randn(batch, H, P, N, dtype=pdt)
    if requires_grad:
        for t in args.values():
            t.requires_grad_()
    return args


def closed_form_float64(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None):
    """y[t] = sum_{s<=t} (C[t].B[s]) exp(A (S(t) - S(s))) dt[s] x[s] + exp(A S(t)) h0 @ C[t] (+ D x),
    S the cumulative sum of dt: every term at once, float64."""
    x, dt, A = x.double(), dt.double(), A.double()
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    H = x.shape[2]
    Bh = B.double().repeat_interleave(H // B.shape[2], dim=2)             # [batch, L, H, N]
    Ch = C.double().repeat_interleave(H // C.shape[2], dim=2)
    S = dt.cumsum(1)                                                    # [batch, L, H]
    L = x.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    W = torch.exp(A * (S[:, :, None, :] - S[:, None, :, :])) * causal[None, :, :, None]  # [batch, t, s, H]
    scores = torch.einsum("bthn,bshn->btsh", Ch, Bh) * W
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dt, x)
    if initial_state is not None:
        y = y + torch.exp(A * S)[..., None] * torch.einsum("bhpn,bthn->bthp", initial_state.double(), Ch)
    if D is not None:
        y = y + x * (D.double()[:, None] if D.dim() == 1 else D.double())
    if z is not None:
        y = y * F.silu(z.double())
    return y


SPEC_CASES = [  # (batch, L, H, P, G, N, state, D)
    (2, 9, 4, 3, 2, 5, False, "head"),
    (1, 1, 2, 2, 1, 3, True, None),
    (2, 13, 4, 2, 4, 3, True, "channel"),
]


def case_id(case) -> str:
    batch, L, H, P, G, N, state, D = case
    return f"B{batch}-L{L}-H{H}-P{P}-G{G}-N{N}" + ("-h0" if state else "") + (f"-D{D}" if D else "")


@pytest.mark.parametrize("impl", ["ref", "chunked"])
@pytest.mark.parametrize("case", SPEC_CASES, ids=case_id)
def test_matches_float64_closed_form(case, impl):
    fn = {"ref": ssd_ref, "chunked": ssd_chunked}[impl]
    batch, L, H, P, G, N, state, D = case
    args = make_inputs(batch, L, H, P, G, N, torch.float64, state, D)
    truth = closed_form_float64(**args)
    assert max_rel(fn(**args, chunk_size=4), truth) < 1e-12
    y32 = fn(**{k: v.float() for k, v in args.items()}, chunk_size=4)
    assert y32.dtype == torch.float32 and max_rel(y32, truth) < 1e-5


CHUNK_CASES = [  # (batch, L, H, P, G, N, state, D, chunk)
    (2, 16, 4, 3, 2, 5, False, "head", 4),        # L a multiple of the chunk
    (2, 13, 4, 3, 2, 5, True, "channel", 4),      # partial last chunk, initial state
    (1, 7, 2, 4, 1, 3, True, None, 64),           # one partial chunk
    (2, 21, 6, 2, 3, 4, False, "head", 5),
]


@pytest.mark.parametrize("case", CHUNK_CASES, ids=lambda c: case_id(c[:8]) + f"-T{c[8]}")
def test_chunked_matches_spec_outputs_state_and_gradients(case):
    batch, L, H, P, G, N, state, D, chunk = case
    args = make_inputs(batch, L, H, P, G, N, torch.float32, state, D, requires_grad=True)
    y, last = ssd_chunked(**args, chunk_size=chunk, return_state=True)
    y_ref, last_ref = ssd_ref(**args, return_state=True)
    assert max_rel(y, y_ref) < 1e-5 and max_rel(last, last_ref) < 1e-5
    gy, gs = torch.randn_like(y), torch.randn_like(last)
    names = list(args)
    got = torch.autograd.grad((y * gy).sum() + (last * gs).sum(), [args[k] for k in names])
    want = torch.autograd.grad((y_ref * gy).sum() + (last_ref * gs).sum(), [args[k] for k in names])
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and max_rel(a, b) < 2e-5, (name, max_rel(a, b))


@pytest.mark.parametrize("L", [1, 15, 32, 33], ids=lambda L: f"L{L}")
def test_result_independent_of_chunk_size(L):
    args = make_inputs(2, L, 4, 3, 2, 5, torch.float64, state=True)
    y0, s0 = ssd_chunked(**args, chunk_size=64, return_state=True)
    for chunk in (1, 3, 8, 16):
        y, s = ssd_chunked(**args, chunk_size=chunk, return_state=True)
        assert max_rel(y, y0) < 1e-12 and max_rel(s, s0) < 1e-12


def test_output_dtype_follows_x_and_state_is_float32():
    args = make_inputs(dtype=torch.bfloat16, state=True)
    y, last = ssd(**args, return_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32 and last.shape == (2, 4, 3, 5)
    assert max_rel(y, ssd_ref(**args)) < 1e-2


def test_rejects_bad_shapes():
    args = make_inputs()
    with pytest.raises(ValueError, match="B and C"):
        ssd(**{**args, "B": torch.randn(2, 9, 3, 5), "C": torch.randn(2, 9, 3, 5)})  # 3 groups, 4 heads
    with pytest.raises(ValueError, match="D must be"):
        ssd(**{**args, "D": torch.randn(4, 2)})
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(**args, chunk_size=0)


# ---------------------------------------------------------------- state passing and the one-token update

@pytest.mark.parametrize("split", [1, 6, 12], ids=lambda s: f"split{s}")
def test_state_passing_equals_one_run(split):
    args = make_inputs(2, 13, 4, 3, 2, 5, state=True)
    y, last = ssd(**args, chunk_size=4, return_state=True)
    seq = ("x", "dt", "B", "C", "z")
    left = {k: (v[:, :split] if k in seq else v) for k, v in args.items()}
    y1, mid = ssd(**left, chunk_size=4, return_state=True)
    right = {k: (v[:, split:] if k in seq else v) for k, v in args.items() if k != "initial_state"}
    y2, end = ssd(**right, chunk_size=4, initial_state=mid, return_state=True)
    assert max_rel(torch.cat([y1, y2], 1), y) < 1e-5 and max_rel(end, last) < 1e-5


@pytest.mark.parametrize("D", ["head", "channel"])
def test_state_update_repeated_equals_scan(D):
    args = make_inputs(2, 11, 4, 3, 2, 5, state=True, D=D)
    y, last = ssd(**args, chunk_size=4, return_state=True)
    state = args["initial_state"]
    for t in range(11):
        step = {k: args[k][:, t] for k in ("x", "dt", "B", "C", "z")}
        y_t, state = ssd_state_update(state, **step, A=args["A"], D=args["D"], dt_bias=args["dt_bias"])
        assert y_t.shape == (2, 4, 3) and max_rel(y_t, y[:, t]) < 1e-5
    assert state.dtype == torch.float32 and max_rel(state, last) < 1e-5


# ---------------------------------------------------------------- Triton path

@pytest.fixture
def kernels():
    from bioseq.ops.ssd import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


KERNEL_CASES = [  # (batch, L, H, P, G, N, state, D, chunk): odd L, partial last chunk, groups
    (2, 9, 4, 3, 2, 5, True, "channel", 4),
    (1, 7, 2, 4, 1, 3, False, "head", 64),
    (1, 5, 4, 2, 4, 2, True, None, 2),
]
KERNEL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda dt: DTYPE_IDS[dt])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: case_id(c[:8]) + f"-T{c[8]}")
def test_kernel_matches_spec(kernels, case, dtype):
    """Outputs, final state and every input gradient (the spec runs on the same rounded inputs)."""
    batch, L, H, P, G, N, state, D, chunk = case
    args = make_inputs(batch, L, H, P, G, N, dtype, state, D)
    args = {k: v.to(DEVICE).requires_grad_() for k, v in args.items()}
    y, last = kernels.ssd_triton(**args, chunk_size=chunk, return_state=True)
    y_ref, last_ref = ssd_ref(**args, return_state=True)
    assert y.dtype == dtype and last.dtype == torch.float32
    gy, gs = torch.randn_like(y_ref, dtype=torch.float32), torch.randn_like(last_ref)
    names = list(args)
    got = torch.autograd.grad((y.float() * gy).sum() + (last * gs).sum(), [args[k] for k in names])
    want = torch.autograd.grad((y_ref.float() * gy).sum() + (last_ref * gs).sum(), [args[k] for k in names])
    tol = KERNEL_TOL[dtype]
    assert max_rel(y, y_ref) < tol and max_rel(last, last_ref) < tol
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and max_rel(a, b) < tol, (name, max_rel(a, b))


@needs_kernels
def test_kernel_forced_by_env(monkeypatch, kernels):
    args = {k: v.to(DEVICE) for k, v in make_inputs().items()}
    calls = []
    real = kernels.ssd_triton
    monkeypatch.setattr(kernels, "ssd_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    y = ssd(**args, chunk_size=4)
    assert calls == [1] and max_rel(y, ssd_ref(**args)) < 1e-5
    assert ssd_backend(args["x"].double()) == "ref"
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    ssd(**args)
    assert calls == [1]


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_runs_the_chunked_path(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    calls = []
    monkeypatch.setattr(ssd_pkg, "ssd_chunked", lambda *a, **k: calls.append(1) or ssd_chunked(*a, **k))
    args = make_inputs()
    y = ssd(**args)
    assert calls == [1] and max_rel(y, ssd_ref(**args)) < 1e-5


def test_dispatch_torch_path_caps_the_chunk(monkeypatch):
    """Chunks longer than TORCH_MAX_CHUNK only slow the torch path down: it runs with the cap."""
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    chunks = []
    monkeypatch.setattr(ssd_pkg, "ssd_chunked",
                        lambda *a, **k: chunks.append(a[5]) or ssd_chunked(*a, **k))
    args = make_inputs(1, 70, 2, 2, 1, 3)
    y = ssd(**args, chunk_size=256)
    ssd(**args, chunk_size=16)
    assert chunks == [ssd_pkg.TORCH_MAX_CHUNK, 16] and max_rel(y, ssd_ref(**args)) < 1e-5


def test_dispatch_auto_on_gpu_picks_the_kernel(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    monkeypatch.setattr(ssd_pkg, "use_triton", lambda x: True)   # pretend: CUDA tensor, triton installed
    assert ssd_backend(torch.empty(2, 64, 4, 8, device="meta")) == "triton"
    assert ssd_backend(torch.empty(2, 64, 4, 8, device="meta", dtype=torch.float64)) == "ref"
