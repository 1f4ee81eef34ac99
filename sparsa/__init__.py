"""sparsa: sparse attention for long-context LLMs."""
from typing import Any

from .api import attention
from . import nn
from .methods import AttentionStats, DecodeMethod, Method, get_method, list_methods, register

__version__ = "0.1.0"


def apply(model: Any, prefill: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Run a transformers model's attention through sparsa methods; returns an undo handle.

    ``sparsa.apply(model, prefill="vertical_slash", decode="quest")``. transformers is imported
    on the first call only. Full documentation: :func:`sparsa.integrations.hf.apply`.
    """
    from .integrations.hf import apply as _apply
    return _apply(model, prefill, *args, **kwargs)


__all__ = ["AttentionStats", "DecodeMethod", "Method", "__version__", "apply", "attention", "get_method",
           "list_methods", "register"]
