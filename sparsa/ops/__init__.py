"""Attention primitives: each folder holds a PyTorch reference (the spec) and, where one
exists, a Triton kernel, behind one dispatching function."""

import importlib.util

_KERNEL_MODULES = {
    "block_sparse": "sparsa.ops.block_sparse.triton",
    "vertical_slash": "sparsa.ops.vertical_slash.triton",
    "nsa": "sparsa.ops.nsa.triton",
    "sparse_decode": "sparsa.ops.sparse_decode.triton",
}


def kernel_status() -> dict[str, bool]:
    """Which primitives have a Triton kernel in this installation (and triton to run it)."""
    has_triton = importlib.util.find_spec("triton") is not None
    out = {}
    for name, mod in _KERNEL_MODULES.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        out[name] = has_triton and found
    return out
