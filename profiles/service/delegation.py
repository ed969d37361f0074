"""Offering the service's record operations on an object that holds a service, without
restating their signatures: :class:`Delegated` is a descriptor typed from the protocol's own
method, so ``mypy --strict`` checks every call against :class:`~profiles.service.protocol.
ProfileService`'s signature, and ``help()`` shows its docstring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from profiles.service.protocol import ProfileService

__all__ = ["Delegated"]

P = ParamSpec("P")
R = TypeVar("R")


class HasService(Protocol):
    @property
    def service(self) -> ProfileService: ...


class Delegated(Generic[P, R]):
    """``name = Delegated(ProfileService.name)`` in a class whose instances have a
    ``service``: ``instance.name(...)`` is ``instance.service.name(...)``."""

    def __init__(self, method: Callable[Concatenate[ProfileService, P], R]) -> None:
        self._name = method.__name__
        self.__doc__ = method.__doc__
        self.__wrapped__ = method

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self._name:
            raise TypeError(f"{owner.__name__}.{name} delegates {self._name}: use one name")

    def __call__(self, instance: HasService, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Called on the class, as a plain method is: ``ProfileStore.create(store, ...)``."""
        method: Callable[P, R] = getattr(instance.service, self._name)
        return method(*args, **kwargs)

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Delegated[P, R]: ...
    @overload
    def __get__(self, instance: HasService, owner: type | None = None) -> Callable[P, R]: ...
    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return getattr(instance.service, self._name)
