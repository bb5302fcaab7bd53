"""mLSTM cell: parallel == chunkwise == step loop (outputs, states, gradients), the written-out chunkwise
backward against autograd, state hand-over between calls, dtypes, memory kept for the backward, and the
Triton kernels against the reference (outputs and the gradients of q, k, v, both gates and the initial state).

Kernel tests (``test_kernel_*``) run on CUDA when there is a GPU, else under Triton's interpreter on CPU
(tests/ops/kernel_env.py).

Gates are drawn wide (i ~ 2 + 3 N(0, 1)) so that the stabiliser m_t is large and the eps * exp(m_t) term of
the normaliser (the only place m_t enters h) shows up in the gradients.
"""

from __future__ import annotations

import pytest
import torch

from bioseq.ops.mlstm import (
    mlstm,
    mlstm_backend,
    mlstm_chunkwise,
    mlstm_chunkwise_autograd,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
    mlstm_zero_state,
)
from tests.ops.kernel_env import (
    DEVICE,
    KERNELS_HERE,
    compile_for_sm90,
    needs_kernels,
    run_kernel_tests_in_fresh_process,
    tl,
)

CASES = [  # (B, NH, S, DH, chunk)
    (2, 3, 37, 8, 8),      # partial last chunk
    (1, 2, 64, 16, 64),    # one full chunk
    (2, 2, 130, 8, 64),    # two full chunks + 2 tokens
    (1, 2, 40, 4, 8),      # a multiple of the chunk
    (2, 1, 1, 4, 8),       # one token
    (1, 1, 5, 4, 64),      # shorter than a chunk
]


def case_id(c) -> str:
    return "B{}-NH{}-S{}-DH{}-chunk{}".format(*c)


def inputs(B, NH, S, DH, dtype=torch.float64, wide=True, grad=True):
    q, k, v = (torch.randn(B, NH, S, DH, dtype=dtype) for _ in range(3))
    i = torch.randn(B, NH, S, dtype=dtype) * (3.0 if wide else 1.0) + (2.0 if wide else 0.0)
    f = torch.randn(B, NH, S, dtype=dtype) + 2.0
    return [x.requires_grad_(grad) for x in (q, k, v, i, f)]


def random_state(B, NH, DH, dtype=torch.float64, grad=True):
    C = torch.randn(B, NH, DH, DH, dtype=dtype)
    n = torch.randn(B, NH, DH, dtype=dtype)
    m = torch.randn(B, NH, 1, dtype=dtype)
    return tuple(x.requires_grad_(grad) for x in (C, n, m))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def grads(out, leaves, seed=1):
    """Gradients of a fixed random linear function of `out` (a tensor or a tuple of tensors)."""
    outs = out if isinstance(out, tuple) else (out,)
    flat = [o for x in outs for o in (x if isinstance(x, tuple) else (x,))]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in flat)
    return torch.autograd.grad(loss, leaves)


NAMES = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


# ---------------------------------------------------------------- forms agree (float64)

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forms_agree_without_state(case):
    """parallel (spec) == chunkwise (both backwards) == step loop: outputs and input gradients."""
    B, NH, S, DH, chunk = case
    x = inputs(B, NH, S, DH)
    h_loop = mlstm_recurrent(*x)
    g_loop = grads(h_loop, x)
    # the parallel form leaves out the zero state's m_0 term: equal up to eps * exp(m_t) with m_t <= 0
    h_par = mlstm_parallel(*x)
    assert max_rel(h_par, h_loop) < 1e-5
    for a, b in zip(grads(h_par, x), g_loop):
        assert max_rel(a, b) < 1e-5
    for fn in (mlstm_chunkwise, mlstm_chunkwise_autograd):
        h = fn(*x, chunk_size=chunk)
        assert h.shape == (B, NH, S, DH) and h.dtype == torch.float64
        assert max_rel(h, h_loop) < 1e-10, fn.__name__
        for name, a, b in zip(NAMES, grads(h, x), g_loop):
            assert max_rel(a, b) < 1e-9, (fn.__name__, name, max_rel(a, b))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunkwise_with_state_matches_step_loop(case):
    """Initial state in, final state out: outputs, states, and gradients of everything (incl. the state)."""
    B, NH, S, DH, chunk = case
    x = inputs(B, NH, S, DH)
    s0 = random_state(B, NH, DH)
    h_loop, st_loop = mlstm_recurrent(*x, initial_state=s0, return_state=True)
    g_loop = grads((h_loop, st_loop), x + list(s0))
    for fn in (mlstm_chunkwise, mlstm_chunkwise_autograd):
        h, st = fn(*x, chunk_size=chunk, initial_state=s0, return_state=True)
        assert max_rel(h, h_loop) < 1e-10
        for a, b in zip(st, st_loop):
            assert a.shape == b.shape and max_rel(a, b) < 1e-10
        for name, a, b in zip(NAMES, grads((h, st), x + list(s0)), g_loop):
            assert max_rel(a, b) < 1e-9, (fn.__name__, name, max_rel(a, b))


@pytest.mark.parametrize("layout", ["token-major", "channel-major"])
@pytest.mark.parametrize("group", [1, 3, None], ids=["group1", "group3", "group-default"])
@pytest.mark.parametrize("eps", [1e-6, 1e-2], ids=["eps1e-6", "eps1e-2"])
@pytest.mark.parametrize("chunk", [8, 64], ids=lambda c: f"chunk{c}")
def test_written_backward_matches_autograd(chunk, eps, group, layout, monkeypatch):
    """The custom backward (constant stabilisers + the m-recurrence correction) == autograd, to rounding,
    with the chunks processed one, three or all at a time, for contiguous q, k, v and for views of
    channel-major [NH, DH, B, S] buffers (the xLSTM layer's; chunked into [DH, chunk] blocks)."""
    from bioseq.ops.mlstm import ref

    if group is not None:
        monkeypatch.setattr(ref, "_group_size", lambda *shape: group)
    x = inputs(2, 2, 150, 8)
    if layout == "channel-major":
        x[:3] = [t.detach().permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1).requires_grad_()
                 for t in x[:3]]
        assert ref.positions_adjacent(x[0])
    s0 = random_state(2, 2, 8)
    out = mlstm_chunkwise(*x, chunk_size=chunk, initial_state=s0, return_state=True, eps=eps)
    ref = mlstm_chunkwise_autograd(*x, chunk_size=chunk, initial_state=s0, return_state=True, eps=eps)
    for name, a, b in zip(NAMES, grads(out, x + list(s0)), grads(ref, x + list(s0))):
        assert max_rel(a, b) < 1e-11, (name, max_rel(a, b))


def test_gradcheck_tiny():
    x = inputs(1, 1, 5, 2)
    s0 = random_state(1, 1, 2)

    def fn(q, k, v, i, f, C, n, m):
        h, (C1, n1, m1) = mlstm_chunkwise(q, k, v, i, f, chunk_size=2, initial_state=(C, n, m),
                                          return_state=True, eps=1e-2)
        return h, C1, n1, m1

    assert torch.autograd.gradcheck(fn, (*x, *s0))


# ---------------------------------------------------------------- state hand-over, steps

@pytest.mark.parametrize("split", [1, 13, 32], ids=lambda s: f"split{s}")
def test_two_calls_with_state_equal_one_call(split):
    x = inputs(2, 2, 45, 8)
    h_all, st_all = mlstm_chunkwise(*x, chunk_size=16, return_state=True)
    g_all = grads((h_all, st_all), x)
    first = [t[:, :, :split] for t in x]
    second = [t[:, :, split:] for t in x]
    h1, st1 = mlstm_chunkwise(*first, chunk_size=16, return_state=True)
    h2, st2 = mlstm_chunkwise(*second, chunk_size=16, initial_state=st1, return_state=True)
    assert max_rel(torch.cat([h1, h2], dim=2), h_all) < 1e-12
    for a, b in zip(st2, st_all):
        assert max_rel(a, b) < 1e-12
    for name, a, b in zip(NAMES, grads((torch.cat([h1, h2], dim=2), st2), x), g_all):
        assert max_rel(a, b) < 1e-10, name


def test_prefill_then_steps():
    """Chunkwise prefill, then mlstm_step token by token == one chunkwise call (float32)."""
    x = inputs(2, 4, 50, 16, dtype=torch.float32, wide=False, grad=False)
    h_all = mlstm_chunkwise(*x, chunk_size=16)
    h, state = mlstm_chunkwise(*[t[:, :, :30] for t in x], chunk_size=16, return_state=True)
    outs = [h]
    for t in range(30, 50):
        h_t, state = mlstm_step(*[u[:, :, t] for u in x], state)
        assert h_t.shape == (2, 4, 16) and state[2].shape == (2, 4, 1)
        outs.append(h_t[:, :, None])
    assert max_rel(torch.cat(outs, dim=2), h_all) < 1e-5


def test_zero_state_is_the_default():
    x = inputs(1, 2, 20, 4)
    s0 = mlstm_zero_state(1, 2, 4, device="cpu", dtype=torch.float64)
    assert [tuple(s.shape) for s in s0] == [(1, 2, 4, 4), (1, 2, 4), (1, 2, 1)]
    assert all(s.dtype == torch.float64 and not s.any() for s in s0)
    assert mlstm_zero_state(1, 2, 4, "cpu")[0].dtype == torch.float32
    torch.testing.assert_close(mlstm_chunkwise(*x, chunk_size=8, initial_state=s0),
                               mlstm_chunkwise(*x, chunk_size=8), rtol=0, atol=0)


# ---------------------------------------------------------------- dtypes, dispatch, errors, memory

def test_float32_matches_float64():
    x64 = inputs(2, 2, 100, 16, grad=False, wide=False)
    x32 = [t.float().requires_grad_() for t in x64]
    x64 = [t.requires_grad_() for t in x64]
    h32, h64 = mlstm_chunkwise(*x32, chunk_size=32), mlstm_chunkwise(*x64, chunk_size=32)
    assert h32.dtype == torch.float32 and max_rel(h32, h64) < 1e-5
    for name, a, b in zip(NAMES, grads(h32, x32), grads(h64, x64)):
        assert a.dtype == torch.float32 and max_rel(a, b) < 1e-5, name


def test_bfloat16_inputs_keep_float32_state():
    x = [t.bfloat16() for t in inputs(1, 2, 20, 8, dtype=torch.float32, grad=False)]
    h, (C, n, m) = mlstm_chunkwise(*x, chunk_size=8, return_state=True)
    assert h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32
    h32 = mlstm_chunkwise(*[t.float() for t in x], chunk_size=8)
    assert max_rel(h, h32) < 1e-2


def test_mlstm_dispatch_on_cpu_is_the_chunkwise_reference(monkeypatch):
    monkeypatch.delenv("BIOSEQ_OPS", raising=False)
    assert mlstm_backend(torch.empty(1, 2, 30, 8)) == "ref"
    x = inputs(1, 2, 30, 8, dtype=torch.float32, grad=False)
    h, st = mlstm(*x, chunk_size=8, return_state=True)
    h_ref, st_ref = mlstm_chunkwise(*x, chunk_size=8, return_state=True)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    for a, b in zip(st, st_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_shapes_raise():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q, k, v"):
        mlstm_chunkwise(q, q[..., :3], q, q[..., 0], q[..., 0])
    with pytest.raises(ValueError, match="igate and fgate"):
        mlstm_chunkwise(q, q, q, q[..., :4, 0], q[..., 0])
    with pytest.raises(ValueError, match="state"):
        mlstm_chunkwise(q, q, q, q[..., 0], q[..., 0], initial_state=mlstm_zero_state(1, 2, 3))


@pytest.mark.parametrize("S", [128, 100])
def test_chunkwise_keeps_the_callers_layouts(S):
    """q, k, v given as views of channel-major [NH * DH, B, S] buffers (the xLSTM layer's layout): their
    gradients come back in that layout (no copy to bring them back) and h is stored token-major; values
    equal those of contiguous inputs (float64: the two layouts sum in different orders)."""
    B, NH, DH, chunk = 2, 2, 8, 32
    q, k, v, i, f = inputs(B, NH, S, DH, grad=False)
    bufs = [t.permute(1, 3, 0, 2).contiguous().requires_grad_() for t in (q, k, v)]   # [NH, DH, B, S]
    views = [b.permute(2, 0, 3, 1) for b in bufs]                                     # [B, NH, S, DH]
    seen = {}
    for name, t in zip("qkv", views):
        t.register_hook(lambda g, name=name: seen.__setitem__(name, g.stride()))
    h = mlstm_chunkwise(*views, i, f, chunk_size=chunk)
    assert h.shape == (B, NH, S, DH) and h.transpose(1, 2).is_contiguous()
    gh = torch.randn_like(h)
    grads = torch.autograd.grad(h, bufs, gh)
    assert seen == {name: t.stride() for name, t in zip("qkv", views)}
    plain = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    h_ref = mlstm_chunkwise(*plain, i, f, chunk_size=chunk)
    want = torch.autograd.grad(h_ref, plain, gh)
    assert max_rel(h, h_ref) < 1e-12
    for g, w in zip(grads, want):
        assert max_rel(g.permute(2, 0, 3, 1), w) < 1e-12


def test_backward_keeps_inputs_and_chunk_states_only():
    """Saved for the backward: q, k, v, gates, the output h, three numbers per token and one (C, n, m) per
    chunk; no [S, chunk] matrices."""
    B, NH, S, DH, chunk = 1, 2, 512, 16, 64
    x = inputs(B, NH, S, DH, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        mlstm_chunkwise(*x, chunk_size=chunk)
    n_chunks = S // chunk
    budget = (4 * B * NH * S * DH + 5 * B * NH * S + (n_chunks + 1) * B * NH * (DH * DH + DH + 1)
              + B * NH)
    assert sum(saved) <= budget, (sum(saved), budget)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        saved.clear()
        mlstm_chunkwise_autograd(*x, chunk_size=chunk)
    assert sum(saved) > 2 * budget  # the plain-autograd version keeps the intra-chunk matrices


def test_dispatch_auto_on_gpu_picks_kernels_where_they_apply(monkeypatch):
    from bioseq.ops import mlstm as pkg

    monkeypatch.setattr(pkg, "use_triton", lambda x: True)   # pretend: CUDA tensor, triton installed
    q = torch.empty(2, 4, 64, 64, device="meta")
    assert mlstm_backend(q, 64) == "triton" and mlstm_backend(q.bfloat16(), 16) == "triton"
    assert mlstm_backend(q, 48) == "ref"                       # not a power of two
    assert mlstm_backend(q, 8) == "ref"                        # below the kernels' smallest tile
    assert mlstm_backend(q.double(), 64) == "ref"
    assert mlstm_backend(q, 128) == "ref"                      # tiles beyond the registers
    assert mlstm_backend(torch.empty(2, 4, 64, 128, device="meta"), 64) == "ref"   # DH > 64


# ---------------------------------------------------------------- Triton kernels

@pytest.fixture
def kernels():
    from bioseq.ops.mlstm import triton as module

    return module


@pytest.mark.skipif(tl is None or KERNELS_HERE, reason="kernel tests ran in this process (or no triton)")
def test_kernels_run_in_fresh_process():
    """Triton was imported here without the interpreter: run this file's kernel tests in a subprocess."""
    run_kernel_tests_in_fresh_process(__file__)


KERNEL_CASES = [  # (B, NH, S, DH, chunk)
    (1, 2, 37, 16, 16),    # partial last chunk
    (2, 1, 32, 8, 16),     # DH below the 16-wide tile
    (1, 1, 5, 16, 16),     # shorter than a chunk
    (1, 2, 40, 20, 32),    # DH not a power of two
]


def kernel_inputs(B, NH, S, DH, dtype=torch.float32):
    gen = torch.Generator().manual_seed(S * 31 + DH)
    q, k, v = (torch.randn(B, NH, S, DH, generator=gen).to(DEVICE, dtype).requires_grad_() for _ in range(3))
    i = torch.randn(B, NH, S, generator=gen).to(DEVICE).requires_grad_()
    f = (torch.randn(B, NH, S, generator=gen) + 2.0).to(DEVICE).requires_grad_()
    s0 = (torch.randn(B, NH, DH, DH, generator=gen), torch.randn(B, NH, DH, generator=gen),
          torch.randn(B, NH, 1, generator=gen))
    return [q, k, v, i, f], [t.to(DEVICE).requires_grad_() for t in s0]


TOL_KERNEL = 2e-6 if DEVICE == "cpu" else 2e-5


@needs_kernels
@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_kernel_matches_ref_with_state(kernels, case):
    """Against the reference in float64. Gradient tolerance 5e-5: dm0 = <dC0, C0> + <dn0, n0> sums DH^2
    products with cancellation (the float32 reference itself is ~1e-5 off there)."""
    B, NH, S, DH, chunk = case
    x, s0 = kernel_inputs(B, NH, S, DH)
    h, st = kernels.mlstm_chunkwise_triton(*x, chunk_size=chunk, initial_state=s0, return_state=True)
    x64, s64 = ([t.detach().double().requires_grad_() for t in ts] for ts in (x, s0))
    h_ref, st_ref = mlstm_chunkwise(*x64, chunk_size=chunk, initial_state=s64, return_state=True)
    assert h.shape == h_ref.shape and h.dtype == torch.float32
    assert max_rel(h, h_ref) < TOL_KERNEL
    for a, b in zip(st, st_ref):
        assert a.shape == b.shape and a.dtype == torch.float32 and max_rel(a, b) < TOL_KERNEL
    got, want = grads((h, st), x + s0), grads((h_ref, st_ref), x64 + s64)
    for name, a, b in zip(NAMES, got, want):
        assert max_rel(a, b) < 5e-5, (name, max_rel(a, b))


@needs_kernels
def test_kernel_fresh_state_and_half_inputs(kernels):
    x, _ = kernel_inputs(2, 2, 50, 16)
    h = kernels.mlstm_chunkwise_triton(*x, chunk_size=16)
    h_ref = mlstm_chunkwise(*x, chunk_size=16)
    assert max_rel(h, h_ref) < TOL_KERNEL
    gy = torch.randn_like(h)
    for name, a, b in zip(NAMES, torch.autograd.grad(h, x, gy), torch.autograd.grad(h_ref, x, gy)):
        assert max_rel(a, b) < 10 * TOL_KERNEL, name
    x16 = [t.detach().half() if t.dim() == 4 else t.detach() for t in x]
    h16 = kernels.mlstm_chunkwise_triton(*x16, chunk_size=16)
    assert h16.dtype == torch.float16
    assert max_rel(h16, mlstm_chunkwise(*[t.float() for t in x16], chunk_size=16)) < 2e-3


@needs_kernels
def test_kernel_forced_by_env(monkeypatch, kernels):
    x, _ = kernel_inputs(1, 2, 20, 16)
    calls = []
    real = kernels.mlstm_chunkwise_triton
    monkeypatch.setattr(kernels, "mlstm_chunkwise_triton", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("BIOSEQ_OPS", "triton")
    h = mlstm(*x, chunk_size=16)
    assert calls == [1] and max_rel(h, mlstm_chunkwise(*x, chunk_size=16)) < TOL_KERNEL
    mlstm(*x, chunk_size=8)                                   # no kernel for this chunk: the reference
    monkeypatch.setenv("BIOSEQ_OPS", "ref")
    mlstm(*x, chunk_size=16)
    assert calls == [1]


@needs_kernels
def test_kernel_argument_errors(kernels):
    x, _ = kernel_inputs(1, 1, 8, 16)
    with pytest.raises(ValueError, match="power-of-two chunk_size"):
        kernels.mlstm_chunkwise_triton(*x, chunk_size=24)


AOT_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bioseq.ops.mlstm import triton as MK

def compile_(fn, consts, warps, floats=()):  # pointers end in _ptr; other non-constexpr arguments are i32
    sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else "fp32" if n in floats
           else "i32" for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

for L, BD in ((64, 64), (16, 16)):
    consts, warps = {"L": L, "BD": BD}, MK._warps(L, BD)
    compile_(MK._chunk_kv_kernel, consts, 4)
    compile_(MK._chunk_out_kernel, consts, warps, floats=("eps",))
    compile_(MK._chunk_bwd_kernel, consts, warps)
    compile_(MK._chunk_state_bwd_kernel, consts, warps)
    compile_(MK._chunk_states_kernel, {"BD": BD, "BR": MK.STATE_ROWS}, 4)
    compile_(MK._chunk_states_bwd_kernel, {"BD": BD, "BR": MK.STATE_ROWS}, 4)
print("compiled")
"""


@pytest.mark.slow
@pytest.mark.skipif(tl is None, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile (not run) the kernels for an H100/H200 with Triton's bundled ptxas: catches the type and
    layout errors that the interpreter does not. Fresh process, interpreter off."""
    compile_for_sm90(AOT_CHECK)
