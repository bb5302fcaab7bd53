"""sLSTM cell ops (xLSTM's scalar-memory cell with per-head recurrence); layouts in ``bioseq.ops.slstm.ref``.

- ``slstm_scan(wx, R, b, initial_state)``: a sequence; wx [B, S, 4, NH, DH] (gates i, f, z, o),
  R [NH, DH, 4 * DH], b [4, NH, DH] -> (h [B, S, NH, DH], final state (h, c, n, m) each [B, NH, DH]).
- ``slstm_step(wx_t, R, b, state)``: one token; wx_t [B, 4, NH, DH] -> (h_t [B, NH, DH], state).
- ``slstm_scan_ref``: the step loop under plain autograd (the spec ``slstm_scan`` is tested against).
- ``slstm_zero_state(B, NH, DH, device, dtype)``: the state a fresh sequence starts from.
"""

from bioseq.ops.slstm.ref import State, slstm_scan, slstm_scan_ref, slstm_step, slstm_zero_state

__all__ = ["State", "slstm_scan", "slstm_scan_ref", "slstm_step", "slstm_zero_state"]
