"""Name -> method class registry used by the API, the CLI, the harness and the HF integration."""
from __future__ import annotations

from typing import Any, TypeVar

from .._registry import Registry
from .base import Method

_METHODS: Registry[type[Method]] = Registry("method", "a method name (str) or a Method instance")
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    return _METHODS.register(cls)


def unregister(name: str) -> None:
    """Remove a registered method (for methods registered only for a while, e.g. in tests)."""
    _METHODS.unregister(name)


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return _METHODS.names()


def method_class(name: str) -> type[Method]:
    return _METHODS.get_class(name)


def get_method(name: str, **params: Any) -> Method:
    """Instantiate the method registered as ``name`` with hyper-parameters ``params``."""
    return _METHODS.build(name, **params)
