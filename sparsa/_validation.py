"""Argument checks shared by ops, methods and the public API.

Every check raises ``TypeError`` or ``ValueError`` whose message starts with the
argument's name, so a user can tell at once which input was wrong.
"""
from __future__ import annotations

import math
import os
import tempfile
from numbers import Real
from pathlib import Path

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate SDPA-layout attention inputs.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim).
    Queries are the last ``q_len`` positions of the ``kv_len``-long sequence (causal,
    bottom-right aligned), so ``q_len <= kv_len``.

    Returns (batch, heads, kv_heads, q_len, kv_len, head_dim).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, ndim=4)
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: dtype must be one of float16/bfloat16/float32/float64, got {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{name}: is on the 'meta' device, which holds no data; move it to a real device")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: dtype must match q ({q.dtype}), got k={k.dtype}, v={v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"k, v: device must match q ({q.device}), got k={k.device}, v={v.device}")
    if k.shape != v.shape:
        raise ValueError(f"v: shape {tuple(v.shape)} must equal k's shape {tuple(k.shape)}")
    b, h, lq, d = q.shape
    bk, hkv, lk, dk = k.shape
    if bk != b:
        raise ValueError(f"k: batch {bk} must equal q's batch {b}")
    if dk != d:
        raise ValueError(f"k: head_dim {dk} must equal q's head_dim {d}")
    if hkv < 1 or h % hkv != 0:
        raise ValueError(f"k: kv_heads ({hkv}) must divide q's heads ({h})")
    if lq < 1:
        raise ValueError("q: q_len must be >= 1")
    if lq > lk:
        raise ValueError(f"q: q_len ({lq}) must be <= kv_len ({lk}); queries are the last q_len positions")
    if b < 1 or d < 1:
        raise ValueError(f"q: batch and head_dim must be >= 1, got shape {tuple(q.shape)}")
    return b, h, hkv, lq, lk, d


def check_finite(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first argument that holds a NaN or an infinity.

    One reduction per tensor and a single host read for all of them together (one device sync
    on CUDA), so the check costs about one pass over the inputs.
    """
    for name, x in tensors.items():
        if x.device.type == "meta":
            raise ValueError(f"{name}: is on the 'meta' device, which holds no data; move it to a real device")
    flags = [torch.isfinite(x).all() for x in tensors.values()]
    if bool(torch.stack(flags).all()):
        return
    for (name, x), ok in zip(tensors.items(), flags):
        if not bool(ok):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            raise ValueError(f"{name}: holds {n_nan} NaN and {n_inf} infinite values; sparsa attention "
                             "needs finite inputs (pass check_finite=False to skip this check)")


def check_compression(compression: object) -> float | None:
    if compression is None:
        return None
    if isinstance(compression, bool) or not isinstance(compression, Real):
        raise TypeError(f"compression: expected a number >= 1, got {type(compression).__name__}")
    c = float(compression)
    if not math.isfinite(c) or c < 1.0:
        raise ValueError(f"compression: must be a finite number >= 1 (1 = dense), got {compression}")
    return c


def check_int(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: must be >= {minimum}{hi}, got {value}")
    return value


def check_float(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    x = float(value)
    ok = (x > low if low_open else x >= low) and x <= high
    if not ok or not math.isfinite(x):
        lo = "(" if low_open else "["
        raise ValueError(f"{name}: must lie in {lo}{low}, {high}], got {value}")
    return x


def check_duration(name: str, value: object) -> float:
    """A time limit in seconds: a number >= 0 (infinity = no limit); NaN is rejected."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number of seconds, got {type(value).__name__}")
    x = float(value)
    if math.isnan(x) or x < 0:
        raise ValueError(f"{name}: must be a number of seconds >= 0, got {value}")
    return x


def check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return check_float("scale", scale, 0.0, math.inf, low_open=True)


def check_device(name: str, spec: object) -> torch.device:
    """Parse a device request ("cpu", "cuda", "cuda:1", a ``torch.device``) and check it can run here.

    Raises ``ValueError`` naming ``name`` for an unknown device, a CUDA request without a usable
    CUDA GPU (e.g. a CPU-only torch build) or a CUDA index past the visible GPUs, and for the
    'meta' device (no data to compute with).
    """
    try:
        dev = spec if isinstance(spec, torch.device) else torch.device(str(spec))
    except RuntimeError:
        raise ValueError(f"{name}: {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "meta":
        raise ValueError(f"{name}: the 'meta' device holds no data; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise ValueError(f"{name}: {spec!s} requested but {why} (torch {torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {spec!s} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return dev


def _non_empty(name: str, path: str | os.PathLike[str]) -> Path:
    if not str(os.fspath(path)).strip():
        raise ValueError(f"{name}: empty path; name a directory (\".\" for the current one)")
    return Path(path)


def check_dir_path(name: str, path: str | os.PathLike[str]) -> Path:
    """Check, without creating anything, that directory ``path`` exists or could be created.

    Raises ``ValueError`` naming ``name`` when the path is a file, lies under a regular file, or
    its nearest existing ancestor is not writable, and for an empty path (which would silently
    mean the current directory). :func:`check_writable_dir` creates it later.
    """
    p = _non_empty(name, path)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{name}: {p} exists and is not a directory")
        return p
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: {p} lies under a regular file ({parent}), not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot create {p} ({parent} is not writable)")
    return p


def check_out_file(name: str, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Check, without creating anything, that file ``path`` could be written: not empty, not a
    directory, its folder exists or could be created (see :func:`check_dir_path`); with
    ``overwrite=False`` an existing file is refused too. Raises ``ValueError`` naming ``name``."""
    p = _non_empty(name, path)
    if p.is_dir():
        raise ValueError(f"{name}: {p} is a directory; name the file to write")
    if p.exists() and not overwrite:
        raise ValueError(f"{name}: {p} exists; move it away or choose another path")
    parent = p.absolute().parent
    if parent.exists():
        if not parent.is_dir():
            raise ValueError(f"{name}: {p} lies under a regular file ({parent}), not a directory")
        try:  # a real write: root passes os.access on a read-only mount
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-"):
                pass
        except OSError as e:
            raise ValueError(f"{name}: cannot create {p} ({parent}: {e.strerror or e})") from None
    else:
        check_dir_path(name, parent)
    return p


def check_writable_dir(name: str, path: str | os.PathLike[str]) -> Path:
    """Create directory ``path`` if needed and check a file can be written in it.

    Raises ``ValueError`` naming ``name`` when the path is empty, under a regular file, is a
    file, or is not writable (read-only file system, permissions).
    """
    p = _non_empty(name, path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except FileExistsError:
        raise ValueError(f"{name}: {p} exists and is not a directory") from None
    except NotADirectoryError:
        raise ValueError(f"{name}: {p} lies under a regular file, not a directory") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot write to {p} ({e.strerror or e})") from None
    return p
