"""causal_conv1d: ref vs an explicit float64 loop, the shifted multiply-add path and the Triton kernel vs
ref (outputs, dx, dweight, dbias), and the dispatcher.

Kernel tests (``test_kernel_*``) run on CUDA when there is a GPU, else under Triton's interpreter on CPU;
see tests/ops/test_fftconv.py for why a fresh process is used when triton was imported without it.
"""

from __future__ import annotations

import pytest
import torch

from bioseq.ops.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_backend,
    causal_conv1d_ref,
    causal_conv1d_shifted,
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

TOL = {torch.float32: 2e-6 if DEVICE == "cpu" else 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def loop_float64(x, w, bias, activation):
    """y[b, d, t] = act(bias[d] + sum_j w[d, j] x[b, d, t - (K-1) + j]) by explicit loops in float64."""
    x, w = x.detach().double(), w.detach().double()
    B, D, L = x.shape
    K = w.shape[1]
    y = torch.zeros(B, D, L, dtype=torch.float64)
    for b in range(B):
        for d in range(D):
            for t in range(L):
                z = 0.0 if bias is None else float(bias[d])
                for j in range(K):
                    s = t - (K - 1) + j
                    if s >= 0:
                        z += float(w[d, j]) * float(x[b, d, s])
                y[b, d, t] = z / (1.0 + torch.exp(torch.tensor(-z, dtype=torch.float64))) if activation else z
    return y


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------- ref (the spec)

TORCH_IMPLS = {"ref": causal_conv1d_ref, "shifted": causal_conv1d_shifted}


@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("K", [1, 2, 3, 4, 8], ids=lambda K: f"K{K}")
@pytest.mark.parametrize("impl", list(TORCH_IMPLS))
def test_torch_impls_match_float64_loop(impl, K, has_bias, activation):
    """The spec (conv1d) and the CPU path (shifted multiply-adds) against explicit float64 loops."""
    fn = TORCH_IMPLS[impl]
    x, w = torch.randn(2, 3, 9), torch.randn(3, K)
    bias = torch.randn(3) if has_bias else None
    truth = loop_float64(x, w, bias, activation)
    y64 = fn(x.double(), w.double(), None if bias is None else bias.double(), activation)
    assert max_rel(y64, truth) < 1e-12
    y32 = fn(x, w, bias, activation)
    assert y32.dtype == torch.float32 and max_rel(y32, truth) < 1e-6


def test_ref_length_one_and_filter_longer_than_input():
    x, w, bias = torch.randn(1, 2, 1), torch.randn(2, 4), torch.randn(2)
    assert max_rel(causal_conv1d_ref(x, w, bias), loop_float64(x, w, bias, None)) < 1e-6
    x = torch.randn(1, 2, 3)
    assert max_rel(causal_conv1d_ref(x, w, bias, "silu"), loop_float64(x, w, bias, "silu")) < 1e-6


def test_ref_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_ref(torch.randn(1, 2, 5), torch.randn(2, 3), None, "gelu")


# ---------------------------------------------------------------- shifted multiply-adds (the CPU path)

SHIFTED_CASES = [  # (B, D, L, K): odd lengths, L < K, L = 1
    (2, 6, 1, 4), (1, 5, 2, 3), (2, 7, 33, 4), (3, 48, 33, 3), (1, 3, 100, 8), (2, 4, 5, 1),
]


@pytest.mark.parametrize("case", SHIFTED_CASES, ids=lambda c: "B{}-D{}-L{}-K{}".format(*c))
def test_shifted_values_and_gradients_match_ref_on_transposed_views(case):
    """The models' layout: x is a [B, L, D] activation seen as [B, D, L]; outputs and all gradients."""
    B, D, L, K = case
    x = torch.randn(B, L, D).transpose(1, 2).requires_grad_()
    w = torch.randn(D, K, requires_grad=True)
    bias = torch.randn(D, requires_grad=True)
    y = causal_conv1d_shifted(x, w, bias, "silu")
    y_ref = causal_conv1d_ref(x, w, bias, "silu")
    assert y.shape == (B, D, L) and y.is_contiguous()
    gy = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, w, bias), gy))
    want = (y_ref, *torch.autograd.grad(y_ref, (x, w, bias), gy))
    for name, a, b in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert max_rel(a, b) < 2e-6, (name, max_rel(a, b))


def test_shifted_reads_a_channel_major_buffer_in_place():
    """xLSTM's layout: a channel-major [D, B, L] buffer seen as [B, D, L] is convolved without a copy; the
    output keeps that layout and outputs and gradients equal the spec's."""
    B, D, L, K = 2, 6, 37, 4
    buf = torch.randn(D, B, L, requires_grad=True)
    x = buf.transpose(0, 1)
    w, bias = torch.randn(D, K, requires_grad=True), torch.randn(D, requires_grad=True)
    y = causal_conv1d_shifted(x, w, bias, "silu")
    assert y.stride() == x.stride()                                  # channel-major in, channel-major out
    y_ref = causal_conv1d_ref(x, w, bias, "silu")
    gy = torch.randn(D, B, L).transpose(0, 1)                         # a gradient in the same layout
    got = (y, *torch.autograd.grad(y, (buf, w, bias), gy))
    want = (y_ref, *torch.autograd.grad(y_ref, (buf, w, bias), gy))
    for name, a, b in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert max_rel(a, b) < 2e-6, (name, max_rel(a, b))


def test_shifted_gradcheck_float64():
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_conv1d_shifted(a, b, c, "silu"), (x, w, bias))
    assert torch.autograd.gradcheck(lambda a, b: causal_conv1d_shifted(a, b), (x, w))
    gy = torch.randn(2, 3, 7, dtype=torch.float64)
    got = torch.autograd.grad(causal_conv1d_shifted(x, w, bias, "silu"), (x, w, bias), gy)
    want = torch.autograd.grad(causal_conv1d_ref(x, w, bias, "silu"), (x, w, bias), gy)
    for a, b in zip(got, want):  # float64 stays float64 in every gradient
        assert a.dtype == torch.float64 and max_rel(a, b) < 1e-12


def test_shifted_half_precision_matches_float32():
    x, w, bias = torch.randn(2, 5, 40), torch.randn(5, 4), torch.randn(5)
    y = causal_conv1d_shifted(x.bfloat16(), w, bias, "silu")
    assert y.dtype == torch.bfloat16
    assert max_rel(y, causal_conv1d_ref(x.bfloat16(), w, bias, "silu")) < 1.5e-2


def test_shifted_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_shifted(torch.randn(1, 2, 5), torch.randn(2, 3), None, "gelu")


# ---------------------------------------------------------------- Triton kernel

@pytest.fixture
def kernels():
    from bioseq.ops.causal_conv1d import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


CASES = [  # (B, D, L, K, bias, activation)
    (2, 3, 1, 4, True, "silu"),
    (1, 5, 7, 3, False, None),
    (2, 4, 33, 2, True, None),
    (1, 3, 100, 4, True, "silu"),
    (2, 3, 20, 4, False, "silu"),
    (2, 17, 24, 8, True, "silu"),   # K = 8 (the kernel's maximum), two channel tiles
    (1, 3, 5, 1, True, None),
]


def case_id(case) -> str:
    B, D, L, K, bias, act = case
    return f"B{B}-D{D}-L{L}-K{K}" + ("" if bias else "-nobias") + (f"-{act}" if act else "")


def run_both(kernels, x, w, bias, activation):
    leaves = [t for t in (x, w, bias) if t is not None]
    y = kernels.causal_conv1d_triton(x, w, bias, activation)
    y_ref = causal_conv1d_ref(x, w, bias, activation)
    gy = torch.randn_like(y_ref)
    return ((y, *torch.autograd.grad(y, leaves, gy)), (y_ref, *torch.autograd.grad(y_ref, leaves, gy)))


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda dt: DTYPE_IDS[dt])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_ref(kernels, case, dtype):
    B, D, L, K, has_bias, activation = case
    x = torch.randn(B, D, L, device=DEVICE, dtype=dtype, requires_grad=True)
    w = torch.randn(D, K, device=DEVICE, requires_grad=True)
    bias = torch.randn(D, device=DEVICE, requires_grad=True) if has_bias else None
    if dtype != torch.float32:  # the 16-bit ref rounds w and bias to x's dtype: give both sides those values
        w = w.detach().to(dtype).float().requires_grad_()
        bias = None if bias is None else bias.detach().to(dtype).float().requires_grad_()
    got, want = run_both(kernels, x, w, bias, activation)
    assert got[0].dtype == dtype and got[0].shape == (B, D, L)
    assert got[1].dtype == dtype and got[2].dtype == torch.float32 and got[2].shape == (D, K)
    tol = TOL[dtype]
    for name, a, b in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert max_rel(a, b) < tol, (name, max_rel(a, b))


@needs_kernels
def test_kernel_strided_input(kernels):
    """Mamba/Hyena layout: x is a [B, L, D] tensor seen as [B, D, L]."""
    x = torch.randn(2, 30, 6, device=DEVICE).transpose(1, 2).requires_grad_()
    w = torch.randn(6, 4, device=DEVICE, requires_grad=True)
    bias = torch.randn(6, device=DEVICE, requires_grad=True)
    got, want = run_both(kernels, x, w, bias, "silu")
    for a, b in zip(got, want):
        assert max_rel(a, b) < TOL[torch.float32]


@needs_kernels
def test_kernel_opcheck(kernels):
    """torch.library's own checks of the custom op: schema, fake tensor kernel, autograd registration."""
    x = torch.randn(2, 3, 20, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 4, device=DEVICE, requires_grad=True)
    bias = torch.randn(3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.bioseq.causal_conv1d_fwd.default, (x, w, bias, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_kernels
def test_kernel_argument_errors(kernels):
    x = torch.randn(1, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="K <= 8"):
        kernels.causal_conv1d_triton(x, torch.randn(2, 9, device=DEVICE))
    with pytest.raises(ValueError, match="activation"):
        kernels.causal_conv1d_triton(x, torch.randn(2, 3, device=DEVICE), None, "relu")
    with pytest.raises(ValueError, match="bias"):
        kernels.causal_conv1d_triton(x, torch.randn(2, 3, device=DEVICE), torch.randn(5, device=DEVICE))


@needs_kernels
def test_kernel_forced_by_env(monkeypatch, kernels):
    x, w, bias = (torch.randn(2, 3, 40, device=DEVICE), torch.randn(3, 4, device=DEVICE),
                  torch.randn(3, device=DEVICE))
    calls = []
    real = kernels.causal_conv1d_triton
    monkeypatch.setattr(kernels, "causal_conv1d_triton", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    y = causal_conv1d(x, w, bias, "silu")
    assert calls == [1] and max_rel(y, causal_conv1d_ref(x, w, bias, "silu")) < TOL[torch.float32]
    assert causal_conv1d_backend(x, torch.randn(3, 9)) == "ref"      # K > 8: ref even when forced
    assert causal_conv1d_backend(x.double(), w.double()) == "ref"     # no float64 kernel
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    causal_conv1d(x, w, bias, "silu")
    assert calls == [1]


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_uses_ref(monkeypatch):
    """On CPU: the shifted multiply-adds for K <= 8 (bit-identical to calling them), conv1d beyond."""
    from bioseq.ops import causal_conv1d as pkg

    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    x, w = torch.randn(1, 2, 16), torch.randn(2, 3)
    assert causal_conv1d_backend(x, w) == "ref"
    torch.testing.assert_close(causal_conv1d(x, w, None, "silu"), causal_conv1d_shifted(x, w, None, "silu"),
                               rtol=0, atol=0)
    calls = []
    monkeypatch.setattr(pkg, "causal_conv1d_ref",
                        lambda *a: calls.append(a[1].shape[-1]) or causal_conv1d_ref(*a))
    y = causal_conv1d(x, torch.randn(2, 9), None, None)
    assert calls == [9] and y.shape == (1, 2, 16)


def test_dispatch_auto_on_gpu_picks_kernel_for_short_filters(monkeypatch):
    from bioseq.ops import causal_conv1d as pkg

    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    monkeypatch.setattr(pkg, "use_triton", lambda x: True)   # pretend: CUDA tensor, triton installed
    x = torch.empty(2, 8, 64, device="meta")
    assert causal_conv1d_backend(x, torch.empty(8, 4, device="meta")) == "triton"
    assert causal_conv1d_backend(x, torch.empty(8, 12, device="meta")) == "ref"


AOT_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bioseq.ops.causal_conv1d import triton as CC

def compile_(fn, ptrs, consts):  # every argument that is neither a pointer nor a constexpr is an i32
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))

consts = {"K": 4, "HAS_BIAS": True, "SILU": True, "BD": 16, "BL": 256}
for x in ("*fp32", "*bf16"):
    params = {"w_ptr": "*fp32", "bias_ptr": "*fp32", "part_ptr": "*fp32"}
    compile_(CC._cc1d_fwd_kernel, {"x_ptr": x, "y_ptr": x, **params}, consts)
    compile_(CC._cc1d_bwd_kernel, {"x_ptr": x, "gy_ptr": x, "dx_ptr": x, **params}, consts)
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(tl is None, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile (not run) the kernels for an H100/H200 with Triton's bundled ptxas: catches the type and
    layout errors that the interpreter does not. Fresh process, interpreter off."""
    compile_for_sm90(AOT_CHECK)
