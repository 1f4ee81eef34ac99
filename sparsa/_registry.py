"""Name -> dataclass registry shared by the methods and the evaluation tasks."""
from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Classes registered under their ``name`` attribute, built from keyword parameters.

    ``kind`` names the thing in errors ("method", "task"); ``expected`` says what a lookup
    takes, for the type error of a non-string name.
    """

    def __init__(self, kind: str, expected: str) -> None:
        self.kind, self.expected = kind, expected
        self._classes: dict[str, C] = {}

    def register(self, cls: C) -> C:
        """Add ``cls`` under ``cls.name``; a second class under the same name is an error."""
        if not cls.name:
            raise ValueError(f"{cls.__name__}: a registered {self.kind} needs a non-empty `name`")
        known = self._classes.get(cls.name)
        if known is not None and known is not cls:
            raise ValueError(f"{self.kind} name {cls.name!r} is already registered by {known.__name__}")
        self._classes[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove the class registered as ``name`` (a ``KeyError`` if there is none)."""
        if name not in self._classes:
            raise KeyError(f"no {self.kind} is registered as {name!r}")
        del self._classes[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._classes)

    def items(self) -> list[tuple[str, C]]:
        """(name, class) pairs, in registration order."""
        return list(self._classes.items())

    def get_class(self, name: str) -> C:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind}: expected {self.expected}, got {type(name).__name__}")
        if name not in self._classes:
            raise ValueError(f"{self.kind}: unknown {self.kind} {name!r}; available: {', '.join(self._classes)}")
        return self._classes[name]

    def build(self, name: str, **params: Any) -> Any:
        """An instance of the class registered as ``name``; unknown parameters are a TypeError."""
        cls = self.get_class(name)
        allowed = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise TypeError(f"{unknown[0]}: not a parameter of {self.kind} {name!r}; "
                            f"allowed: {', '.join(sorted(allowed)) or 'none'}")
        return cls(**params)
