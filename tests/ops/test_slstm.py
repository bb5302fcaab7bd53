"""sLSTM cell: the fast scan (loop without autograd + written-out BPTT) against the plain-autograd step loop
(outputs, final states, gradients of everything incl. the state), gradcheck, state hand-over, dtypes, and the
documented layouts against the reference package's parameters in the xLSTM fixture."""

from __future__ import annotations

import pytest
import torch

from bioseq.ops.slstm import slstm_scan, slstm_scan_ref, slstm_step, slstm_zero_state

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
    p = params(2, 4, 2, 2)
    s0 = random_state(2, 2, 2)

    def fn(wx, R, b, h0, c0, n0, m0):
        h, st = slstm_scan(wx, R, b, (h0, c0, n0, m0))
        return (h, *st)

    assert torch.autograd.gradcheck(fn, (*p, *s0))
    assert torch.autograd.gradcheck(lambda wx, R, b: slstm_scan(wx, R, b)[0], tuple(p))


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
