"""selective_scan: the spec vs a float64 closed form; the blocked CPU path vs the spec (outputs, final
state, every input gradient) and its memory; the per-token update, state passing; the Triton kernel vs
the spec (outputs and gradients) and dispatch.

Kernel tests (``test_kernel_*``) run on CUDA when there is a GPU, else under Triton's interpreter on CPU;
see tests/ops/test_fftconv.py for why a fresh process is used when triton was imported without it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioseq.ops import selective_scan as scan_pkg
from bioseq.ops.selective_scan import (
    selective_scan,
    selective_scan_backend,
    selective_scan_blocked,
    selective_scan_ref,
    selective_state_update,
)
from tests.ops.kernel_env import (
    DEVICE,
    DTYPE_IDS,
    KERNEL_DTYPES,
    KERNELS_HERE,
    compile_for_sm90,
    needs_kernels,
    run_kernel_tests_in_fresh_process,
    tl,
)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def make_inputs(batch=2, dim=6, L=9, N=4, groups=0, dtype=torch.float32, state=False, extras=True,
                requires_grad=False):
    """Random arguments; groups=0 means B, C shared over channels ([batch, N, L])."""
    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    args = dict(
        u=torch.randn(batch, dim, L, dtype=dtype),
        delta=torch.randn(batch, dim, L, dtype=dtype) * 0.5,
        A=-torch.rand(dim, N, dtype=torch.float32 if dtype != torch.float64 else dtype) * 3 - 0.1,
        B=torch.randn(*bc_shape, dtype=dtype),
        C=torch.randn(*bc_shape, dtype=dtype),
    )
    if extras:
        args.update(D=torch.randn(dim, dtype=args["A"].dtype), z=torch.randn(batch, dim, L, dtype=dtype),
                    delta_bias=torch.randn(dim, dtype=args["A"].dtype) * 0.3)
    if state:
        args["initial_state"] = torch.randn(batch, dim, N, dtype=args["A"].dtype)
    if requires_grad:
        for t in args.values():
            t.requires_grad_()
    return args


def closed_form_float64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None):
    """y[t] = sum_n C[t,n] (exp(A S(0..t)) h0 + sum_{s<=t} exp(A (S(t) - S(s))) delta[s] B[s,n] u[s]),
    with S the cumulative sum of delta: every term at once, no recurrence, float64."""
    u, delta, A = u.double(), delta.double(), A.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    Bd = (B if B.dim() == 4 else B.unsqueeze(1)).double()
    Cd = (C if C.dim() == 4 else C.unsqueeze(1)).double()
    Bd = Bd.repeat_interleave(dim // Bd.shape[1], dim=1)                  # [batch, dim, N, L]
    Cd = Cd.repeat_interleave(dim // Cd.shape[1], dim=1)
    S = delta.cumsum(-1)                                                 # [batch, dim, L]
    diff = S[..., :, None] - S[..., None, :]                             # [batch, dim, t, s]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    W = torch.exp(A[None, :, :, None, None] * diff[:, :, None]) * causal  # [batch, dim, N, t, s]
    h = torch.einsum("bdnts,bds,bdns->bdnt", W, delta * u, Bd)
    if initial_state is not None:
        h = h + torch.exp(A[None, :, :, None] * S[:, :, None, :]) * initial_state.double()[..., None]
    y = (h * Cd).sum(2)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y


SPEC_CASES = [  # (batch, dim, L, N, groups, state)
    (2, 6, 9, 4, 0, False),
    (1, 4, 1, 3, 0, True),
    (2, 6, 13, 4, 3, True),
    (1, 8, 17, 2, 2, False),
]


def spec_id(case) -> str:
    batch, dim, L, N, groups, state = case
    return f"B{batch}-D{dim}-L{L}-N{N}" + (f"-G{groups}" if groups else "") + ("-h0" if state else "")


@pytest.mark.parametrize("softplus", [False, True], ids=["linear", "softplus"])
@pytest.mark.parametrize("case", SPEC_CASES, ids=spec_id)
def test_spec_matches_float64_closed_form(case, softplus):
    batch, dim, L, N, groups, state = case
    args = make_inputs(batch, dim, L, N, groups, torch.float64, state)
    if not softplus:
        args["delta"] = args["delta"].abs()
        args["delta_bias"] = args["delta_bias"].abs()
    truth = closed_form_float64(**args, delta_softplus=softplus)
    assert max_rel(selective_scan_ref(**args, delta_softplus=softplus), truth) < 1e-12
    args32 = {k: v.float() for k, v in args.items()}
    y32 = selective_scan_ref(**args32, delta_softplus=softplus)
    assert y32.dtype == torch.float32 and max_rel(y32, truth) < 1e-5


def test_spec_output_dtype_follows_u_and_state_is_float32():
    args = make_inputs(dtype=torch.bfloat16, state=True)
    args["initial_state"] = args["initial_state"].float()
    y, last = selective_scan_ref(**args, delta_softplus=True, return_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32 and last.shape == (2, 6, 4)


def test_spec_rejects_bad_shapes():
    args = make_inputs()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_ref(**{**args, "A": torch.randn(5, 4)})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_ref(**{**args, "B": torch.randn(2, 4, 4, 9)})  # 4 groups do not divide dim 6
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_ref(**args, initial_state=torch.randn(2, 6, 3))


# ---------------------------------------------------------------- the blocked CPU path

BLOCKED_CASES = [  # (batch, dim, L, N, groups, state, block, segment_elements)
    (2, 6, 16, 4, 0, False, 4, 10 ** 9),        # L a multiple of the block, one segment
    (2, 6, 13, 4, 0, True, 4, 2 * 6 * 4 * 8),   # partial last block, segments of 2 blocks, initial state
    (1, 8, 17, 3, 2, True, 8, 1),               # grouped B/C, one block per segment
    (2, 6, 11, 4, 3, False, 3, 2 * 6 * 4 * 9),  # odd block, 3 blocks per segment, partial last segment
    (1, 4, 1, 3, 0, True, 8, 10 ** 9),          # L = 1
    (2, 4, 29, 2, 0, True, 64, 10 ** 9),        # one block longer than the sequence
]


def blocked_id(case) -> str:
    *spec, block, seg = case
    return spec_id(spec) + f"-T{block}-S{seg}"


def compare_with_spec(args, dtype, block, seg, softplus=True):
    y, last = selective_scan_blocked(**args, delta_softplus=softplus, return_state=True, block=block,
                                     segment_elements=seg)
    y_ref, last_ref = selective_scan_ref(**args, delta_softplus=softplus, return_state=True)
    gy, gs = torch.randn_like(y_ref), torch.randn_like(last_ref)
    names = list(args)
    got = torch.autograd.grad((y * gy).sum() + (last * gs).sum(), [args[k] for k in names])
    want = torch.autograd.grad((y_ref * gy).sum() + (last_ref * gs).sum(), [args[k] for k in names])
    assert y.dtype == y_ref.dtype and last.dtype == last_ref.dtype
    return [("y", y, y_ref), ("last_state", last, last_ref)] + [
        ("d" + k, a, b) for k, a, b in zip(names, got, want)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", BLOCKED_CASES, ids=blocked_id)
def test_blocked_matches_spec_outputs_state_and_all_gradients(case, dtype):
    batch, dim, L, N, groups, state, block, seg = case
    args = make_inputs(batch, dim, L, N, groups, dtype, state, requires_grad=True)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for name, a, b in compare_with_spec(args, dtype, block, seg):
        assert a.shape == b.shape and max_rel(a, b) < tol, (name, max_rel(a, b))


@pytest.mark.parametrize("extras", [False, True], ids=["bare", "D-z-bias"])
def test_blocked_without_softplus_or_extras(extras):
    args = make_inputs(2, 6, 13, 4, 0, torch.float64, True, extras=extras, requires_grad=True)
    with torch.no_grad():
        args["delta"].abs_()
    for name, a, b in compare_with_spec(args, torch.float64, 4, 2 * 6 * 4 * 8, softplus=False):
        assert max_rel(a, b) < 1e-12, name


def test_blocked_gradcheck_float64():
    args = make_inputs(1, 4, 7, 3, 2, torch.float64, True, requires_grad=True)
    names = list(args)

    def fn(*tensors):
        y, last = selective_scan_blocked(**dict(zip(names, tensors)), delta_softplus=True, return_state=True,
                                         block=3, segment_elements=1 * 4 * 3 * 3)
        return y, last

    assert torch.autograd.gradcheck(fn, [args[k] for k in names])


@pytest.mark.parametrize("groups", [0, 2], ids=["shared", "G2"])
def test_blocked_on_mamba_layout_views(groups):
    """Mamba's layout: u, delta and z are [batch, L, dim] tensors seen as [batch, dim, L], B and C
    [batch, L, N] seen as [batch, N, L] (no copies on the way in; y comes back as such a view)."""
    args = make_inputs(2, 8, 16, 4, groups, torch.float64, True)
    views = {}
    for k, v in args.items():
        if k in ("u", "delta", "z", "B", "C"):
            v = v.movedim(-1, 1).contiguous().movedim(1, -1)        # same values, time-major memory
        views[k] = v.requires_grad_()
    assert not views["u"].is_contiguous() and views["u"].transpose(1, 2).is_contiguous()
    for name, a, b in compare_with_spec(views, torch.float64, 8, 2 * 8 * 4 * 8):
        assert max_rel(a, b) < 1e-12, name


def test_blocked_half_precision_input():
    args = make_inputs(2, 6, 21, 4, 0, torch.bfloat16, False)
    y = selective_scan_blocked(**args, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and max_rel(y, selective_scan_ref(**args, delta_softplus=True)) < 1e-2


def saved_elements(fn) -> int:
    """Number of tensor elements the autograd graph of ``fn()`` saves for backward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_blocked_autograd_keeps_no_state_per_step():
    """The spec's graph keeps a state per step (>= batch * dim * L * N elements); the blocked path keeps
    its inputs (8 [batch, dim, L] tensors with D, z and the softplus, B and C) and one state per segment."""
    batch, dim, L, N = 2, 32, 256, 64
    full = batch * dim * L * N
    args = make_inputs(batch, dim, L, N, 0, torch.float32, True, requires_grad=True)
    spec = saved_elements(lambda: selective_scan_ref(**args, delta_softplus=True))
    blocked = saved_elements(lambda: selective_scan_blocked(**args, delta_softplus=True, block=8,
                                                            segment_elements=batch * dim * N * 32))
    assert spec >= full
    assert blocked < 0.25 * full, (blocked, full)


# ---------------------------------------------------------------- state passing and the one-token update

STATE_CASES = [(2, 6, 11, 4, 0), (1, 6, 12, 3, 2)]


@pytest.mark.parametrize("split", [1, 5, 10], ids=lambda s: f"split{s}")
@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: spec_id((*c, False)))
def test_state_passing_equals_one_run(case, split):
    batch, dim, L, N, groups = case
    args = make_inputs(batch, dim, L, N, groups, state=True)
    y, last = selective_scan(**args, delta_softplus=True, return_state=True)
    sl = {k: v[..., :split] for k, v in args.items() if k in ("u", "delta", "B", "C", "z")}
    sr = {k: v[..., split:] for k, v in args.items() if k in ("u", "delta", "B", "C", "z")}
    common = {k: args[k] for k in ("A", "D", "delta_bias")}
    y1, mid = selective_scan(**sl, **common, initial_state=args["initial_state"], delta_softplus=True,
                             return_state=True)
    y2, end = selective_scan(**sr, **common, initial_state=mid, delta_softplus=True, return_state=True)
    assert max_rel(torch.cat([y1, y2], -1), y) < 1e-5 and max_rel(end, last) < 1e-5


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: spec_id((*c, False)))
def test_state_update_repeated_equals_scan(case):
    batch, dim, L, N, groups = case
    args = make_inputs(batch, dim, L, N, groups, state=True)
    y, last = selective_scan_ref(**args, delta_softplus=True, return_state=True)
    state = args["initial_state"]
    for t in range(L):
        step = {k: args[k][..., t] for k in ("u", "delta", "B", "C", "z")}
        y_t, state = selective_state_update(state, **step, A=args["A"], D=args["D"],
                                            delta_bias=args["delta_bias"], delta_softplus=True)
        assert y_t.shape == (batch, dim) and max_rel(y_t, y[..., t]) < 1e-5
    assert state.dtype == torch.float32 and max_rel(state, last) < 1e-5


def test_state_update_leaves_state_unchanged():
    args = make_inputs(1, 4, 1, 3, state=True)
    state = args["initial_state"].clone()
    selective_state_update(state, args["u"][..., 0], args["delta"][..., 0], args["A"], args["B"][..., 0],
                           args["C"][..., 0])
    assert torch.equal(state, args["initial_state"])


# ---------------------------------------------------------------- Triton kernel

@pytest.fixture
def kernels():
    from bioseq.ops.selective_scan import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


KERNEL_CASES = [  # (batch, dim, L, N, groups, state, chunk): odd L, L not a multiple of the chunk
    (2, 6, 13, 4, 0, True, 4),
    (1, 8, 17, 3, 2, False, 8),     # grouped B/C, N not a power of two
    (2, 4, 5, 16, 0, True, 64),     # one partial chunk
    (1, 3, 1, 2, 0, True, 4),       # L = 1
]
KERNEL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def kernel_id(case) -> str:
    *spec, chunk = case
    return spec_id(spec) + f"-chunk{chunk}"


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda dt: DTYPE_IDS[dt])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=kernel_id)
def test_kernel_matches_spec(kernels, case, dtype):
    """Outputs, final state and every input gradient (the spec runs on the same rounded inputs)."""
    batch, dim, L, N, groups, state, chunk = case
    args = make_inputs(batch, dim, L, N, groups, dtype, state)
    args = {k: v.to(DEVICE).requires_grad_() for k, v in args.items()}
    y, last = kernels.selective_scan_triton(**args, delta_softplus=True, return_state=True, chunk=chunk)
    y_ref, last_ref = selective_scan_ref(**args, delta_softplus=True, return_state=True)
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
def test_kernel_without_softplus_or_extras_and_strided_inputs(kernels):
    """Mamba's layout: u and delta are [batch, L, dim] tensors seen as [batch, dim, L]."""
    args = make_inputs(2, 6, 11, 4, 0, torch.float32, False, extras=False)
    args["u"] = args["u"].transpose(1, 2).contiguous().transpose(1, 2)
    args["delta"] = args["delta"].abs().transpose(1, 2).contiguous().transpose(1, 2)
    args = {k: v.to(DEVICE).requires_grad_() for k, v in args.items()}
    y = kernels.selective_scan_triton(**args, chunk=4)
    y_ref = selective_scan_ref(**args)
    gy = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, list(args.values()), gy)
    want = torch.autograd.grad(y_ref, list(args.values()), gy)
    assert max_rel(y, y_ref) < 1e-5
    for name, a, b in zip(args, got, want):
        assert max_rel(a, b) < 1e-5, name


@needs_kernels
def test_kernel_state_passing(kernels):
    args = {k: v.to(DEVICE) for k, v in make_inputs(1, 4, 12, 3, 0, torch.float32, True).items()}
    y, last = kernels.selective_scan_triton(**args, delta_softplus=True, return_state=True, chunk=4)
    seq = ("u", "delta", "B", "C", "z")
    left = {k: (v[..., :5] if k in seq else v) for k, v in args.items()}
    right = {k: (v[..., 5:] if k in seq else v) for k, v in args.items() if k != "initial_state"}
    y1, mid = kernels.selective_scan_triton(**left, delta_softplus=True, return_state=True, chunk=4)
    y2, end = kernels.selective_scan_triton(**right, initial_state=mid, delta_softplus=True,
                                            return_state=True, chunk=4)
    assert max_rel(torch.cat([y1, y2], -1), y) < 1e-5 and max_rel(end, last) < 1e-5


@needs_kernels
def test_kernel_opcheck(kernels):
    """torch.library's own checks of the custom op: schema, fake tensor kernel, autograd registration."""
    args = make_inputs(1, 4, 6, 3, 2, torch.float32, True, extras=False)
    u, delta, A, B, C, h0 = (args[k].to(DEVICE).requires_grad_() for k in ("u", "delta", "A", "B", "C",
                                                                            "initial_state"))
    torch.library.opcheck(torch.ops.bioseq.selective_scan_fwd.default, (u, delta.abs(), A, B, C, h0, 4),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_kernels
def test_kernel_rejects_float64(kernels):
    args = {k: v.to(DEVICE) for k, v in make_inputs(dtype=torch.float64).items()}
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        kernels.selective_scan_triton(**args)


@needs_kernels
def test_kernel_forced_by_env(monkeypatch, kernels):
    args = {k: v.to(DEVICE) for k, v in make_inputs().items()}
    calls = []
    real = kernels.selective_scan_triton
    monkeypatch.setattr(kernels, "selective_scan_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    y = selective_scan(**args, delta_softplus=True)
    assert calls == [1] and max_rel(y, selective_scan_ref(**args, delta_softplus=True)) < 1e-5
    assert selective_scan_backend(args["u"].double()) == "ref"
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    selective_scan(**args, delta_softplus=True)
    assert calls == [1]


AOT_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bioseq.ops.selective_scan import triton as SS

def compile_(fn, ptrs, consts):  # every argument that is neither a pointer nor a constexpr is an i32
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))

f32 = "*fp32"
for x in ("*fp32", "*bf16"):
    fwd = {"u_ptr": x, "d_ptr": f32, "A_ptr": f32, "B_ptr": x, "C_ptr": x, "h0_ptr": f32, "y_ptr": x,
           "last_ptr": f32, "ckpt_ptr": f32}
    compile_(SS._ss_fwd_kernel, fwd, {"HAS_H0": True, "BD": 64, "NP": 16, "CHUNK": 64})
    bwd = {**fwd, "gy_ptr": x, "glast_ptr": f32, "du_ptr": x, "ddelta_ptr": f32, "dA_ptr": f32, "dB_ptr": f32,
           "dC_ptr": f32, "dh0_ptr": f32, "scratch_ptr": f32}
    compile_(SS._ss_bwd_kernel, bwd, {"BD": 64, "NP": 16, "CHUNK": 64})
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(tl is None, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile (not run) the kernels for an H100/H200 with Triton's bundled ptxas: catches the type and
    layout errors that the interpreter does not. Fresh process, interpreter off."""
    compile_for_sm90(AOT_CHECK)


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_runs_the_blocked_path(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    calls = []
    real = scan_pkg.selective_scan_blocked
    monkeypatch.setattr(scan_pkg, "selective_scan_blocked", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = make_inputs()
    y = selective_scan(**args, delta_softplus=True)
    assert calls == [1] and max_rel(y, selective_scan_ref(**args, delta_softplus=True)) < 1e-5


def test_dispatch_auto_on_gpu_picks_the_kernel(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    monkeypatch.setattr(scan_pkg, "use_triton", lambda x: True)   # pretend: CUDA tensor, triton installed
    assert selective_scan_backend(torch.empty(2, 8, 64, device="meta")) == "triton"
    assert selective_scan_backend(torch.empty(2, 8, 64, device="meta", dtype=torch.float64)) == "ref"
