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
    """Which primitives have a Triton kernel that can run here.

    True needs the kernel module, triton installed, and a CUDA GPU (or ``TRITON_INTERPRET=1``,
    which runs the kernels slowly on the CPU). Triton installed without a GPU gives False.
    """
    import os

    import torch

    has_triton = importlib.util.find_spec("triton") is not None
    runnable = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"
    out = {}
    for name, mod in _KERNEL_MODULES.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        out[name] = has_triton and found and runnable
    return out


def kernel_note() -> str | None:
    """Why no kernel can run here (None when they can): no triton, or no CUDA GPU."""
    import os

    import torch

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'sparsa[gpu]'); the PyTorch reference runs"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "the Triton kernels need a CUDA GPU; on this machine the PyTorch reference runs"
    return None
