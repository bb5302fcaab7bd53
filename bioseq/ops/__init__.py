"""Fused ops: one folder per op with ref.py (pure torch spec and CPU path) and triton.py (GPU kernels)."""
