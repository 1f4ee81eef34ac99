"""Hyper-parameters of Native Sparse Attention and the parameters of its learned compression."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._validation import check_int, check_tensor


@dataclass(frozen=True)
class NSAConfig:
    """Geometry and budgets of the three NSA branches (defaults: the paper's).

    * compression: compressed token ``i`` summarises keys ``[i*stride, i*stride + block)``;
    * selection: keys are split in blocks of ``sel_block``; each query reads ``n_select`` of
      them (fewer if fewer exist), among them the first ``n_forced_init`` blocks and the
      ``n_forced_local`` most recent ones (the block holding the query and those before it);
    * window: each query reads its last ``window`` keys, itself included (0 = branch off).

    ``stride`` must divide ``block`` and ``sel_block``. Mean-pooling with
    ``block = stride = sel_block = 64`` gives fla's variant.
    """

    block: int = 32
    stride: int = 16
    sel_block: int = 64
    n_select: int = 16
    window: int = 512
    n_forced_init: int = 1
    n_forced_local: int = 2

    def __post_init__(self) -> None:
        check_int("block", self.block, minimum=1)
        check_int("stride", self.stride, minimum=1)
        check_int("sel_block", self.sel_block, minimum=1)
        check_int("window", self.window, minimum=0)
        check_int("n_forced_init", self.n_forced_init, minimum=0)
        check_int("n_forced_local", self.n_forced_local, minimum=0)
        check_int("n_select", self.n_select, minimum=1)
        if self.block % self.stride or self.sel_block % self.stride:
            raise ValueError(f"stride: must divide block ({self.block}) and sel_block ({self.sel_block}), "
                             f"got {self.stride}")
        if self.n_select < self.n_forced:
            raise ValueError(f"n_select: must be >= n_forced_init + n_forced_local ({self.n_forced}), "
                             f"got {self.n_select}")

    @property
    def n_forced(self) -> int:
        """Blocks every query reads whatever their scores (when that many exist)."""
        return self.n_forced_init + self.n_forced_local

    def n_compressed(self, kv_len: int) -> int:
        """Compressed tokens of ``kv_len`` keys: floor((kv_len - block) / stride) + 1, or 0."""
        return 0 if kv_len < self.block else (kv_len - self.block) // self.stride + 1

    def n_sel_blocks(self, kv_len: int) -> int:
        """Selection blocks covering ``kv_len`` keys (the last one may be partial)."""
        return -(-kv_len // self.sel_block)


@dataclass
class CompressionParams:
    """Parameters of the learned block -> token map (one for keys, one for values).

    ``phi(x) = gelu((x + pos).flatten() @ w1 + b1) @ w2 + b2`` for a block ``x`` of shape
    (block, head_dim): ``pos`` (block, head_dim) is the intra-block position embedding,
    ``w1`` (block * head_dim, hidden), ``b1`` (hidden,), ``w2`` (hidden, head_dim),
    ``b2`` (head_dim,). Shared by all KV heads.
    """

    pos: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    def check(self, name: str, block: int, head_dim: int) -> None:
        """Raise ValueError (message starting with ``name``) unless the shapes fit."""
        for field_name in ("pos", "w1", "b1", "w2", "b2"):
            check_tensor(f"{name}.{field_name}", getattr(self, field_name))
        hidden = self.b1.shape[0] if self.b1.ndim == 1 else -1
        want = {"pos": (block, head_dim), "w1": (block * head_dim, hidden), "b1": (hidden,),
                "w2": (hidden, head_dim), "b2": (head_dim,)}
        for field_name, shape in want.items():
            got = tuple(getattr(self, field_name).shape)
            if got != shape:
                raise ValueError(f"{name}.{field_name}: expected shape {shape} for block={block}, "
                                 f"head_dim={head_dim}, got {got}")

    @classmethod
    def random(cls, block: int, head_dim: int, hidden: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
               requires_grad: bool = False) -> CompressionParams:
        """Randomly initialised parameters (fan-in scaled normal weights, small position embedding)."""
        def rnd(*shape: int, std: float) -> torch.Tensor:
            t = torch.randn(*shape, generator=generator, dtype=dtype) * std
            return t.to(device).requires_grad_(requires_grad)

        fan1 = block * head_dim
        return cls(pos=rnd(block, head_dim, std=0.02), w1=rnd(fan1, hidden, std=fan1 ** -0.5),
                   b1=rnd(hidden, std=0.02), w2=rnd(hidden, head_dim, std=hidden ** -0.5),
                   b2=rnd(head_dim, std=0.02))
