"""sLSTM cell: the fast scan (loop without autograd + written-out BPTT) against the plain-autograd step loop
(outputs, final states, gradients of everything incl. the state), gradcheck, state hand-over, dtypes, the
documented layouts against the reference package's parameters in the xLSTM fixture, and the Triton kernels
against the torch path (``test_kernel_*``: on CUDA when there is a GPU, else under Triton's interpreter).
"""

from __future__ import annotations

import pytest
import torch

from bioseq.ops.slstm import (
    slstm_backend,
    slstm_scan,
    slstm_scan_ref,
    slstm_scan_torch,
    slstm_step,
    slstm_zero_state,
)
from tests.ops.kernel_env import (
    DEVICE,
    KERNELS_HERE,
    compile_for_sm90,
    needs_kernels,
    run_kernel_tests_in_fresh_process,
    tl,
)

CASES = [  # (B, S, NH, DH)
    (2, 9, 3, 4),
    (1, 1, 2, 3),
    (3, 17, 1, 5),
    (2, 33, 4, 8),
]


def case_id(c) -> str:
    return "B{}-S{}-NH{}-DH{}".format(*c)


def params(B, S, NH, DH, dtype=torch.float64, grad=True):
    wx = torch.randn(B, S, 4, NH, DH, dtype=dtype)
    R = torch.randn(NH, DH, 4 * DH, dtype=dtype) * 0.5
    b = torch.randn(4, NH, DH, dtype=dtype)
    b[1] += 2.0  # forget gates mostly open, as the package's initialisation makes them
    return [x.requires_grad_(grad) for x in (wx, R, b)]


def random_state(B, NH, DH, dtype=torch.float64, grad=True):
    h, c, m = (torch.randn(B, NH, DH, dtype=dtype) for _ in range(3))
    n = torch.rand(B, NH, DH, dtype=dtype) + 0.5
    return tuple(x.requires_grad_(grad) for x in (h, c, n, m))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def grads(outs, leaves, seed=1):
    """Gradients of a fixed random linear function of the outputs (h and the four final states)."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    return torch.autograd.grad(loss, leaves)


NAMES = ["dwx", "dR", "db", "dh0", "dc0", "dn0", "dm0"]


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scan_matches_autograd_step_loop(case, with_state):
    B, S, NH, DH = case
    p = params(B, S, NH, DH)
    s0 = random_state(B, NH, DH) if with_state else None
    leaves = p + (list(s0) if with_state else [])
    h_ref, st_ref = slstm_scan_ref(*p, initial_state=s0)
    h, st = slstm_scan(*p, initial_state=s0)
    assert h.shape == (B, S, NH, DH) and max_rel(h, h_ref) < 1e-12
    for a, b in zip(st, st_ref):
        assert a.shape == (B, NH, DH) and max_rel(a, b) < 1e-12
    for name, a, b in zip(NAMES, grads((h, *st), leaves), grads((h_ref, *st_ref), leaves)):
        assert max_rel(a, b) < 1e-10, (name, max_rel(a, b))


def test_scan_gradients_of_h_alone():
    """The usual training loss sees h only (no gradient arrives at the returned state)."""
    p = params(2, 20, 2, 4)
    h, _ = slstm_scan(*p)
    h_ref, _ = slstm_scan_ref(*p)
    gy = torch.randn_like(h)
    for name, a, b in zip(NAMES, torch.autograd.grad(h, p, gy), torch.autograd.grad(h_ref, p, gy)):
        assert max_rel(a, b) < 1e-10, name


def test_gradcheck_tiny():
    p = params(1, 3, 1, 2)
    s0 = random_state(1, 1, 2)

    def fn(wx, R, b, h0, c0, n0, m0):
        h, st = slstm_scan(wx, R, b, (h0, c0, n0, m0))
        return (h, *st)

    assert torch.autograd.gradcheck(fn, (*p, *s0))


@pytest.mark.parametrize("split", [1, 7], ids=lambda s: f"split{s}")
def test_two_calls_with_state_equal_one_call(split):
    p = params(2, 15, 2, 4)
    h, st = slstm_scan(*p)
    g_all = grads((h, *st), p)
    h1, st1 = slstm_scan(p[0][:, :split], p[1], p[2])
    h2, st2 = slstm_scan(p[0][:, split:], p[1], p[2], initial_state=st1)
    assert max_rel(torch.cat([h1, h2], dim=1), h) < 1e-12
    for a, b in zip(st2, st):
        assert max_rel(a, b) < 1e-12
    for name, a, b in zip(NAMES, grads((torch.cat([h1, h2], dim=1), *st2), p), g_all):
        assert max_rel(a, b) < 1e-10, name


def test_steps_equal_scan():
    wx, R, b = params(2, 12, 3, 4, dtype=torch.float32, grad=False)
    h, st = slstm_scan(wx, R, b)
    state = slstm_zero_state(2, 3, 4, "cpu")
    for t in range(12):
        h_t, state = slstm_step(wx[:, t], R, b, state)
        assert h_t.shape == (2, 3, 4) and max_rel(h_t, h[:, t]) < 1e-6
    for a, b_ in zip(state, st):
        assert max_rel(a, b_) < 1e-6


def test_fresh_state_uses_the_input_gate_as_first_stabiliser():
    """On a fresh state (n = 0) m_1 = i_1, as in the package; h never depends on m."""
    wx, R, b = params(1, 1, 1, 3, grad=False)
    _, (_, c, n, m) = slstm_scan(wx, R, b)
    i = wx[0, 0, 0, 0] + b[0, 0]
    torch.testing.assert_close(m[0, 0], i)
    torch.testing.assert_close(n[0, 0], torch.ones(3, dtype=torch.float64))


def test_float32_and_bfloat16():
    p64 = params(2, 30, 2, 8, grad=False)
    h64, st64 = slstm_scan(*p64)
    h32, st32 = slstm_scan(*[x.float() for x in p64])
    assert h32.dtype == torch.float32 and all(s.dtype == torch.float32 for s in st32)
    assert max_rel(h32, h64) < 1e-5
    h16, st16 = slstm_scan(p64[0].bfloat16(), p64[1].float(), p64[2].float())
    assert h16.dtype == torch.bfloat16 and st16[1].dtype == torch.float32


def test_bad_shapes_raise():
    wx, R, b = params(1, 3, 2, 4, grad=False)
    with pytest.raises(ValueError, match="wx"):
        slstm_scan(wx[:, :, :3], R, b)
    with pytest.raises(ValueError, match="R must be"):
        slstm_scan(wx, R.view(2, 16, 4), b)
    with pytest.raises(ValueError, match="b must be"):
        slstm_scan(wx, R, b.transpose(0, 1))
    with pytest.raises(ValueError, match="state"):
        slstm_scan(wx, R, b, initial_state=slstm_zero_state(1, 2, 3))


def test_layouts_match_the_reference_package(shared):
    """The documented conversions, on the reference's own parameters: R = external kernel flattened, the
    vanilla kernel = R.view(NH, DH, 4, DH).permute(0, 2, 3, 1), the vanilla bias = b [4, NH, DH]."""
    fx = torch.load(shared("fixtures", "fixture_xlstm_tiny_slstm.pt"), weights_only=True)
    ext = fx["slstm_external"]
    kernel = ext["block1.recurrent_kernel[NH,DH_in,4(i,f,z,o),DH_out]"]
    bias = ext["block1.bias[NH,4(i,f,z,o),DH]"]
    NH, DH = kernel.shape[0], kernel.shape[1]
    R = kernel.reshape(NH, DH, 4 * DH)
    b = bias.transpose(0, 1)
    sd = fx["state_dict"]
    vanilla_R = sd["xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"]
    vanilla_b = sd["xlstm_block_stack.blocks.1.xlstm.slstm_cell._bias_"]
    torch.testing.assert_close(R.view(NH, DH, 4, DH).permute(0, 2, 3, 1).reshape(NH, 4 * DH, DH), vanilla_R,
                               rtol=0, atol=0)
    torch.testing.assert_close(b.reshape(-1), vanilla_b, rtol=0, atol=0)
    assert float(b[1].mean()) > 0 > float(b[1, :, -1].mean())  # the forget-gate bias ramp sits at gate 1


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_uses_the_torch_path(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    wx, R, b = params(1, 6, 2, 4, dtype=torch.float32, grad=False)
    assert slstm_backend(wx) == "ref"
    h, st = slstm_scan(wx, R, b)
    h_t, st_t = slstm_scan_torch(wx, R, b)
    torch.testing.assert_close(h, h_t, rtol=0, atol=0)


def test_dispatch_auto_on_gpu_picks_kernels_where_they_apply(monkeypatch):
    from bioseq.ops import slstm as pkg

    monkeypatch.setattr(pkg, "use_triton", lambda x: True)   # pretend: CUDA tensor, triton installed
    wx = torch.empty(2, 8, 4, 4, 32, device="meta")
    assert slstm_backend(wx) == "triton" and slstm_backend(wx.bfloat16()) == "triton"
    assert slstm_backend(wx.double()) == "ref"
    assert slstm_backend(torch.empty(2, 8, 4, 2, 128, device="meta")) == "ref"   # DH > 64


# ---------------------------------------------------------------- Triton kernels

@pytest.fixture
def kernels():
    from bioseq.ops.slstm import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


KERNEL_CASES = [  # (B, S, NH, DH)
    (2, 9, 3, 4),      # DH below the 16-wide tile
    (1, 7, 2, 16),
    (2, 5, 1, 20),     # DH not a power of two
]
TOL_KERNEL = 2e-6 if DEVICE == "cpu" else 2e-5


@needs_kernels
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_kernel_matches_torch_path(kernels, case, with_state):
    B, S, NH, DH = case
    p = [x.detach().float().to(DEVICE).requires_grad_() for x in params(B, S, NH, DH)]
    s0 = tuple(x.detach().float().to(DEVICE).requires_grad_() for x in random_state(B, NH, DH)) \
        if with_state else None
    leaves = p + (list(s0) if with_state else [])
    h, st = kernels.slstm_scan_triton(*p, initial_state=s0)
    h_ref, st_ref = slstm_scan_torch(*p, initial_state=s0)
    assert h.shape == (B, S, NH, DH) and h.dtype == torch.float32 and max_rel(h, h_ref) < TOL_KERNEL
    for a, b in zip(st, st_ref):
        assert a.shape == (B, NH, DH) and max_rel(a, b) < TOL_KERNEL
    for name, a, b in zip(NAMES, grads((h, *st), leaves), grads((h_ref, *st_ref), leaves)):
        assert max_rel(a, b) < 10 * TOL_KERNEL, (name, max_rel(a, b))


@needs_kernels
def test_kernel_half_inputs_and_forced_dispatch(kernels, monkeypatch):
    wx, R, b = (x.float().to(DEVICE) for x in params(2, 6, 2, 8, grad=False))
    h16, st16 = kernels.slstm_scan_triton(wx.half(), R, b)
    assert h16.dtype == torch.float16 and st16[1].dtype == torch.float32
    assert max_rel(h16, slstm_scan_torch(wx.half().float(), R, b)[0]) < 2e-3
    calls = []
    real = kernels.slstm_scan_triton
    monkeypatch.setattr(kernels, "slstm_scan_triton", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    h, _ = slstm_scan(wx, R, b)
    assert calls == [1] and max_rel(h, slstm_scan_torch(wx, R, b)[0]) < TOL_KERNEL
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    slstm_scan(wx, R, b)
    assert calls == [1]


@needs_kernels
def test_kernel_argument_errors(kernels):
    wx, R, b = (x.float().to(DEVICE) for x in params(1, 3, 1, 80, grad=False))
    with pytest.raises(ValueError, match="DH <= 64"):
        kernels.slstm_scan_triton(wx, R, b)


AOT_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bioseq.ops.slstm import triton as SK

def compile_(fn, consts, warps):  # pointers end in _ptr; other non-constexpr arguments are i32
    sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else "i32" for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

for BD in (32, 64):
    compile_(SK._slstm_fwd_kernel, {"BD": BD}, SK._warps(BD))
    compile_(SK._slstm_bwd_kernel, {"BD": BD, "CHAIN": True}, SK._warps(BD))
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(tl is None, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile (not run) the kernels for an H100/H200 with Triton's bundled ptxas (fresh process,
    interpreter off): catches the type and layout errors that the interpreter does not."""
    compile_for_sm90(AOT_CHECK)
