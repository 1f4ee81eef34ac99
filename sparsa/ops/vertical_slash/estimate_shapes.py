"""What the last-queries line mass takes, shared by its torch (:mod:`.estimate`) and Triton
(:mod:`.estimate_triton`) implementations: the rows it reads and the inputs the kernels take."""
from __future__ import annotations

import torch

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (64, 128)


def last_q_rows(last_q: int, q_len: int) -> int:
    """Rows of the estimate, ``min(last_q, q_len)``; ``last_q`` must be an int >= 1."""
    if isinstance(last_q, bool) or not isinstance(last_q, int) or last_q < 1:
        raise ValueError(f"last_q: must be an int >= 1, got {last_q!r}")
    return min(last_q, q_len)


__all__ = ["TRITON_DTYPES", "TRITON_HEAD_DIMS", "last_q_rows"]
