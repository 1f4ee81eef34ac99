"""sparsa: sparse attention for long-context LLMs."""
from .api import attention
from .methods import AttentionStats, DecodeMethod, Method, get_method, list_methods, register

__version__ = "0.1.0"

__all__ = ["AttentionStats", "DecodeMethod", "Method", "__version__", "attention", "get_method",
           "list_methods", "register"]
