"""Fixture factories that clean up after themselves: what a test makes, the fixture closes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def closing_factory(make: Callable[P, T], close: Callable[[T], object]) -> Iterator[Callable[P, T]]:
    """`make`, remembering each thing it made; on exit each is closed with `close`, in the order made."""
    made: list[T] = []

    def factory(*args: P.args, **kwargs: P.kwargs) -> T:
        thing = make(*args, **kwargs)
        made.append(thing)
        return thing

    try:
        yield factory
    finally:
        for thing in made:
            close(thing)
