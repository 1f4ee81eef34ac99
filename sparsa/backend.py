"""Choice between the PyTorch reference ops and the Triton kernels.

``backend`` arguments accept "auto" (Triton on CUDA tensors when a kernel exists, else the
reference ops), "reference", "sdpa" or "triton". The environment variable ``SPARSA_BACKEND``
sets the default for "auto".

The reference ops express every pattern as a boolean mask over query-key pairs. How that
masked attention is computed is a second choice, :func:`masked_executor`: "reference" runs the
float32 spec (:func:`sparsa.ops.dense.reference.masked_attention`), "sdpa" runs PyTorch SDPA
with the same masks in the inputs' dtype (:mod:`sparsa.ops.dense.sdpa`). "auto" and "sdpa"
use SDPA wherever no Triton kernel runs (the CPU, unsupported shapes on CUDA); only
"reference" keeps the spec.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

BACKENDS = ("auto", "reference", "sdpa", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return "reference", "sdpa" or "triton" for tensors on ``device`` ("auto" gives "triton"
    or "reference"; "sdpa" means the reference ops through the SDPA executor, never Triton)."""
    if backend is None:
        backend = os.environ.get("SPARSA_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        usable = triton_available() and (device.type == "cuda" or triton_interpreted())
        return "triton" if usable and device.type == "cuda" else "reference"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend: 'triton' requested but triton is not installed (pip install 'sparsa[gpu]')")
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError(f"backend: 'triton' needs CUDA tensors (got {device}); "
                             "set TRITON_INTERPRET=1 to run kernels on the CPU")
    return backend


def masked_executor(backend: str | None, device: torch.device) -> str:
    """How the reference ops compute masked attention: "sdpa" or "reference" (the spec).

    Only an explicit ``backend="reference"`` (argument or ``SPARSA_BACKEND``) gives the spec.
    """
    resolve_backend(backend, device)  # validates the name
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    return "reference" if requested == "reference" else "sdpa"


def use_kernel(backend: str | None, device: torch.device, unsupported: Callable[[], str | None]) -> bool:
    """Whether a dispatching op should run its Triton kernel.

    ``unsupported()`` (called only when :func:`resolve_backend` picks "triton") returns None when
    the kernel takes the input, else what it cannot take. Then "auto" falls back to the
    reference (False) and an explicit "triton" raises a ValueError saying why.
    """
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, device) != "triton":
        return False
    reason = unsupported()
    if reason is None:
        return True
    if requested == "triton":
        raise ValueError(f"backend: {reason}; use backend='reference' or 'auto'")
    return False
