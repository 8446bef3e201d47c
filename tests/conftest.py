"""Shared fixtures: run each integration test on asyncio and on uvloop.

Every test imports the installed drain-proxy, the build users get, and the run stops
at once when that is not the intended build (``build_under_test``).

An exception that reaches the event loop's handler (an error in a protocol
callback, a task that died unobserved) fails the test: such errors are bugs
even when the client happened to get its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import build_under_test

build_under_test.import_the_installed_package()  # before anything imports proxy

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


def pytest_configure(config: pytest.Config) -> None:
    problem = build_under_test.problem_with_build_under_test()
    if problem is not None:
        raise pytest.UsageError(f"not testing the intended drain-proxy build: {problem}")
    import proxy

    config.stash[_BUILD] = f"drain-proxy {proxy.build()} build from {Path(proxy.__file__).parent}"


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_BUILD]


_BUILD = pytest.StashKey[str]()


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
def run(loop_kind: str, caplog: pytest.LogCaptureFixture) -> Iterator[Run[Any]]:
    """Run a coroutine to completion on a fresh loop of the parametrised kind.

    The proxy must never log a traceback or an error because of what a client or the
    app sent: both fail the test, like an exception reaching the loop's handler.
    """
    errors: list[dict[str, Any]] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=_loop_factory(loop_kind)) as loop_runner:
            loop_runner.get_loop().set_exception_handler(record)
            return loop_runner.run(coro)

    yield runner
    assert not errors, f"unhandled event-loop errors: {errors}"
    logged = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
              if r.name.startswith(("drain_proxy", "asyncio"))
              and (r.exc_info or r.levelno >= logging.ERROR)]
    assert not logged, f"tracebacks or errors logged: {logged}"
