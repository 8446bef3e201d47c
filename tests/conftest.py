"""Shared fixtures: run each integration test on asyncio and on uvloop.

An exception that reaches the event loop's handler (an error in a protocol
callback, a task that died unobserved) fails the test: such errors are bugs
even when the client happened to get its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Which event loop the test (and a proxy process it starts) runs on."""
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Iterator[Run[Any]]:
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""
    errors: list[dict[str, Any]] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=_loop_factory(loop_kind)) as loop_runner:
            loop_runner.get_loop().set_exception_handler(record)
            return loop_runner.run(coro)

    yield runner
    assert not errors, f"unhandled event-loop errors: {errors}"
