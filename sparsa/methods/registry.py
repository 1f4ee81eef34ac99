"""Name -> method class registry used by the API, the CLI, the harness and the HF integration."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a registered method needs a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_REGISTRY)


def method_class(name: str) -> type[Method]:
    if not isinstance(name, str):
        raise TypeError(f"method: expected a method name (str) or a Method instance, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"method: unknown method {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_method(name: str, **params: Any) -> Method:
    """Instantiate the method registered as ``name`` with hyper-parameters ``params``."""
    cls = method_class(name)
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(f"{unknown[0]}: not a parameter of method {name!r}; allowed: {', '.join(sorted(allowed))}")
    return cls(**params)
