"""Attention primitives: each folder holds a PyTorch reference (the spec) and, where one
exists, a Triton kernel, behind one dispatching function."""
