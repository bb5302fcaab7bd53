"""fftconv: ref vs a float64 direct convolution, ref gradients, the Triton kernel vs ref in outputs and
all three gradients, and the dispatcher.

Kernel tests (named ``test_kernel_*``) run on CUDA when there is a GPU, else on CPU under Triton's
interpreter. The interpreter must be switched on before ``triton`` is first imported; this module sets
``TRITON_INTERPRET=1`` at import, which is enough when it is the first to import triton. When the
whole suite runs in one process, an earlier module (anything importing lightning) may already have
imported triton without it: then the kernel tests skip here and ``test_kernels_run_in_fresh_process``
runs them all in a subprocess with the interpreter on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioseq.errors import BioseqError
from bioseq.ops import fftconv as fftconv_pkg
from bioseq.ops.fftconv import (
    fast_fft_size,
    fftconv,
    fftconv_backend,
    fftconv_ref,
    fftconv_spectral,
    filter_spectrum,
    max_direct_taps,
)
from tests.ops.kernel_env import (
    DEVICE,
    DTYPE_IDS,
    KERNEL_DTYPES,
    KERNELS_HERE,
    REPO,
    compile_for_sm90,
    needs_kernels,
    run_kernel_tests_in_fresh_process,
    tl,
)

TOL = {torch.float32: 2e-6 if DEVICE == "cpu" else 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def direct_float64(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> np.ndarray:
    """Causal convolution by numpy.convolve in float64, one (b, d) row at a time."""
    u64, k64 = u.detach().double().numpy(), k.detach().double().numpy()
    B, D, L = u64.shape
    y = np.zeros((B, D, L))
    for b in range(B):
        for d in range(D):
            y[b, d] = np.convolve(u64[b, d], k64[d, :L])[:L]
            if bias is not None:
                y[b, d] += float(bias[d]) * u64[b, d]
    return y


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------- ref (the spec)

@pytest.mark.parametrize("L", [1, 7, 1000, 4097], ids=lambda L: f"L{L}")
def test_ref_matches_float64_direct(L):
    u, k, bias = torch.randn(2, 3, L), torch.randn(3, L), torch.randn(3)
    truth = direct_float64(u, k, bias)
    y32 = fftconv_ref(u, k, bias)
    assert y32.dtype == torch.float32 and y32.shape == (2, 3, L)
    assert rel_err(y32.numpy(), truth) < 1e-6
    y64 = fftconv_ref(u.double(), k.double(), bias.double())
    assert y64.dtype == torch.float64
    assert rel_err(y64.numpy(), truth) < 1e-12


@pytest.mark.parametrize("L,Lk", [(50, 7), (50, 120), (33, 1)], ids=lambda v: str(v))
def test_ref_filter_length_differs(L, Lk):
    u, k = torch.randn(1, 2, L, dtype=torch.float64), torch.randn(2, Lk, dtype=torch.float64)
    assert rel_err(fftconv_ref(u, k).numpy(), direct_float64(u, k, None)) < 1e-12


def test_ref_half_precision_computes_in_float32():
    u, k = torch.randn(2, 3, 64), torch.randn(3, 64)
    y16 = fftconv_ref(u.half(), k.half())
    assert y16.dtype == torch.float16
    truth = direct_float64(u.half().float(), k.half().float(), None)
    assert rel_err(y16.float().numpy(), truth) < 1e-3


@pytest.mark.parametrize("fn", [fftconv_ref, fftconv_spectral], ids=["ref", "spectral"])
@pytest.mark.parametrize("B,D,L,Lk", [(1, 2, 5, 5), (2, 1, 9, 4), (2, 1, 1, 3), (3, 2, 7, 12)],
                         ids=lambda v: str(v))
def test_gradcheck_float64(fn, B, D, L, Lk):
    """Both FFT paths: autograd through torch.fft (ref) and the hand-written backward (spectral)."""
    u = torch.randn(B, D, L, dtype=torch.float64, requires_grad=True)
    k = torch.randn(D, Lk, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (u, k, bias))
    assert torch.autograd.gradcheck(lambda u, k: fn(u, k), (u, k))


# ---------------------------------------------------------------- spectral path (hand-written backward)

@pytest.mark.parametrize("L", [1, 7, 1000, 4097])
def test_spectral_matches_ref_values_and_grads(L):
    """Outputs and the three gradients equal the autograd-through-FFT spec (fp32) at odd, long L."""
    g = torch.Generator().manual_seed(L)
    u = torch.randn(2, 3, L, generator=g, requires_grad=True)
    k = torch.randn(3, L, generator=g, requires_grad=True)
    bias = torch.randn(3, generator=g, requires_grad=True)
    dy = torch.randn(2, 3, L, generator=g)
    outs = []
    for fn in (fftconv_ref, fftconv_spectral):
        y = fn(u, k, bias)
        grads = torch.autograd.grad(y, (u, k, bias), dy)
        outs.append((y, *grads))
    for a, b in zip(*outs):
        assert max_rel(a, b) < 1e-5
    truth = direct_float64(u.detach(), k.detach(), bias.detach())
    assert max_rel(outs[1][0], torch.from_numpy(truth).float()) < 1e-5


def test_spectral_precomputed_filter_spectrum_and_half_inputs():
    u, k, bias = torch.randn(2, 4, 300), torch.randn(4, 500), torch.randn(4)
    k_f = filter_spectrum(k, 300)                       # taps beyond L are dropped, as in fftconv
    want = fftconv_ref(u, k, bias)
    torch.testing.assert_close(fftconv_spectral(u, k, bias, k_f), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fftconv(u, k, bias, k_f), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k_f"):
        fftconv_spectral(u, k, bias, filter_spectrum(k, 200))
    uh = u.bfloat16().requires_grad_()
    y = fftconv_spectral(uh, k.bfloat16(), bias.bfloat16())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert uh.grad.dtype == torch.bfloat16


def test_spectral_keeps_less_for_backward():
    """The graph holds u and the filter spectrum, not u's [B, D, n/2+1] complex spectrum."""
    u = torch.randn(4, 8, 1024, requires_grad=True)
    k = torch.randn(8, 1024, requires_grad=True)

    def saved_bytes(fn):
        sizes = []
        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(u * 1.0, k * 1.0, None).sum()
        return sum(sizes)

    assert saved_bytes(fftconv_spectral) < 0.5 * saved_bytes(fftconv_ref)


def test_fast_fft_size_is_smallest_5_smooth():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 600):
        expected = next(m for m in range(n, 2 * n + 2) if smooth(m))
        assert fast_fft_size(n) == expected, n


# ---------------------------------------------------------------- Triton kernel under the interpreter

@pytest.fixture
def kernels():
    """The kernel module; kernel tests run on DEVICE (CPU = interpreter)."""
    from bioseq.ops.fftconv import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


CASES = [  # (B, D, L, Lk, bias, block, cols): block/cols 0 = the automatic tile sizes
    (2, 3, 1, 1, True, 0, 0),
    (1, 5, 7, 7, True, 0, 0),
    (2, 4, 33, 33, True, 0, 0),
    (1, 3, 100, 100, True, 0, 0),
    (2, 3, 37, 37, False, 0, 0),
    (3, 2, 100, 40, True, 16, 16),   # 7 blocks per row: many offsets, tiles straddling batch items
    (2, 3, 50, 80, True, 16, 16),    # filter longer than the input
    (2, 2, 70, 5, True, 0, 0),       # short filter: block 16
]


def case_id(case) -> str:
    B, D, L, Lk, bias, block, cols = case
    return f"B{B}-D{D}-L{L}-Lk{Lk}" + ("" if bias else "-nobias") + (f"-C{block}" if block else "")


def run_both(kernels, u, k, bias, block=0, cols=0):
    """Outputs and gradients (u, k[, bias]) of the kernel and of ref for the same upstream gradient."""
    leaves = [t for t in (u, k, bias) if t is not None]
    y = kernels.fftconv_triton(u, k, bias, block=block, cols=cols)
    y_ref = fftconv_ref(u, k, bias)
    gy = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, leaves, gy)
    grads_ref = torch.autograd.grad(y_ref, leaves, gy)
    return (y, *grads), (y_ref, *grads_ref)


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda dt: DTYPE_IDS[dt])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_ref(kernels, case, dtype):
    B, D, L, Lk, has_bias, block, cols = case
    u = torch.randn(B, D, L, dtype=dtype, device=DEVICE, requires_grad=True)
    k = (torch.randn(D, Lk, device=DEVICE) / Lk ** 0.5).requires_grad_()
    bias = torch.randn(D, device=DEVICE, requires_grad=True) if has_bias else None
    got, want = run_both(kernels, u, k, bias, block, cols)
    assert got[0].dtype == dtype and got[0].shape == (B, D, L)
    assert got[1].dtype == dtype and got[2].dtype == torch.float32 and got[2].shape == (D, Lk)
    tol = TOL[dtype]
    for name, a, b in zip(["y", "grad_u", "grad_k", "grad_bias"], got, want):
        assert max_rel(a, b) < tol, (name, max_rel(a, b))
    if Lk > L:  # taps that never reach an output get a zero gradient
        assert torch.all(got[2][:, L:] == 0)


@needs_kernels
def test_kernel_strided_inputs(kernels):
    """Hyena's layout: u is a [B, L, D] tensor seen as [B, D, L]; k is an [L, D] filter transposed."""
    B, D, L = 2, 5, 45
    u = torch.randn(B, L, D, device=DEVICE).transpose(1, 2).requires_grad_()
    k = (torch.randn(L, D, device=DEVICE) / L ** 0.5).t().requires_grad_()
    bias = torch.randn(D, device=DEVICE, requires_grad=True)
    assert not u.is_contiguous() and not k.is_contiguous()
    got, want = run_both(kernels, u, k, bias, 16, 16)
    for a, b in zip(got, want):
        assert max_rel(a, b) < TOL[torch.float32]


@needs_kernels
def test_kernel_opcheck(kernels):
    """torch.library's own checks of the custom op: schema, fake tensor kernel, autograd registration."""
    u = torch.randn(2, 3, 20, device=DEVICE, requires_grad=True)
    k = torch.randn(3, 20, device=DEVICE, requires_grad=True)
    bias = torch.randn(3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.bioseq.fftconv_fwd.default, (u, k, bias, 16, 16),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_kernels
def test_kernel_argument_errors(kernels):
    with pytest.raises(ValueError, match="float64"):
        kernels.fftconv_triton(torch.randn(1, 2, 8, dtype=torch.float64, device=DEVICE), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"k \[D, Lk>=1\]"):
        kernels.fftconv_triton(torch.randn(1, 2, 8, device=DEVICE), torch.randn(3, 8, device=DEVICE))
    with pytest.raises(ValueError, match="bias"):
        kernels.fftconv_triton(torch.randn(1, 2, 8, device=DEVICE), torch.randn(2, 8, device=DEVICE),
                               torch.randn(3, device=DEVICE))


@needs_kernels
def test_kernel_forced_by_env(monkeypatch, kernels):
    """BIOSEQ_OPS=triton sends even CPU tensors to the kernel (here: the interpreter)."""
    u, k, bias = (torch.randn(2, 3, 40, device=DEVICE), torch.randn(3, 40, device=DEVICE),
                  torch.randn(3, device=DEVICE))
    calls = []
    real = kernels.fftconv_triton
    monkeypatch.setattr(kernels, "fftconv_triton", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    assert fftconv_backend(u, k) == "triton"
    y = fftconv(u, k, bias)
    assert calls == [1]
    assert max_rel(y, fftconv_ref(u, k, bias)) < TOL[torch.float32]
    assert fftconv_backend(u.double(), k.double()) == "ref"  # the kernel has no float64 path
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    assert fftconv_backend(u, k) == "ref"
    fftconv(u, k, bias)
    assert calls == [1]


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_uses_ref(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    u, k = torch.randn(1, 2, 16), torch.randn(2, 16)
    assert fftconv_backend(u, k) == "ref"
    torch.testing.assert_close(fftconv(u, k), fftconv_spectral(u, k), rtol=0, atol=0)


def test_dispatch_ref_env_beats_cuda(monkeypatch):
    from bioseq.ops import _dispatch

    class FakeCuda:
        is_cuda = True

    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    assert _dispatch.use_triton(FakeCuda())
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    assert not _dispatch.use_triton(FakeCuda())
    monkeypatch.setenv("BIOSEQ_OPS", "fast")
    with pytest.raises(BioseqError, match="BIOSEQ_OPS"):
        _dispatch.use_triton(FakeCuda())


def test_dispatch_auto_sends_long_filters_to_ref(monkeypatch):
    """In auto mode on a (pretend) GPU the direct kernel only gets filters up to max_direct_taps."""
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    monkeypatch.delenv("BIOSEQ_FFTCONV_MAX_TAPS", raising=False)
    monkeypatch.setattr(fftconv_pkg, "use_triton", lambda x: True)

    def backend(L, Lk, dtype=torch.float32):
        return fftconv_backend(torch.empty(8, 256, L, device="meta", dtype=dtype),
                               torch.empty(256, Lk, device="meta"))

    assert max_direct_taps(torch.float32) == 2048 and max_direct_taps(torch.bfloat16) == 4096
    assert backend(1024, 1024) == "triton"
    assert backend(32768, 32768) == "ref"
    assert backend(4096, 4096, torch.bfloat16) == "triton"
    assert backend(4096, 4096) == "ref"
    assert backend(262144, 64) == "triton"   # short filter on a long input: cost L * Lk
    assert backend(500, 32768) == "triton"   # only min(Lk, L) taps are used
    assert backend(64, 64, torch.float64) == "ref"
    monkeypatch.setenv("BIOSEQ_FFTCONV_MAX_TAPS", "0")
    assert backend(64, 64) == "ref"
    monkeypatch.setenv("BIOSEQ_FFTCONV_MAX_TAPS", "many")
    with pytest.raises(BioseqError, match="BIOSEQ_FFTCONV_MAX_TAPS"):
        backend(64, 64)


def test_benchmark_script_runs_on_cpu(capsys):
    """benchmarks/ops.py at a tiny size: on CPU it says there is no GPU and times the reference only."""
    import runpy

    if torch.cuda.is_available():
        pytest.skip("on a GPU the script runs the full benchmark")
    main = runpy.run_path(str(REPO / "benchmarks" / "ops.py"))["main"]
    assert main(["--lengths", "33,64", "--warmup", "0", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "No GPU" in out and "fftconv" in out and "causal_conv1d" in out
    assert "kernel" not in out.split("No GPU", 1)[1].split("\n", 1)[1]  # no kernel columns on CPU


AOT_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bioseq.ops.fftconv import triton as F

def compile_(fn, ptrs, consts):  # every argument that is neither a pointer nor a constexpr is an i32
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))

for x, split in (("*fp32", False), ("*bf16", True)):
    for rev in (False, True):
        compile_(F._toeplitz_conv_kernel, {"x_ptr": x, "k_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": x},
                 {"HAS_BIAS": True, "REVERSE": rev, "SPLIT": split, "C": 64, "BN": 64})
    compile_(F._toeplitz_corr_kernel, {"u_ptr": x, "g_ptr": x, "gk_ptr": "*fp32"},
             {"FP32": not split, "C": 64, "BM": 64})
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(tl is None, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile (not run) the kernels for an H100/H200 with Triton's bundled ptxas: catches the type and
    layout errors that the interpreter does not. Fresh process, interpreter off."""
    compile_for_sm90(AOT_CHECK)
