"""Unit tests for proxy.telemetry.memory: when freed memory is handed back to the system."""

from __future__ import annotations

import platform

import pytest

from proxy.telemetry.memory import MIN_INTERVAL_S, MIN_PEAK, Trimmer


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.count += 1
        return 1


def test_trims_once_the_load_has_fallen_to_a_quarter_of_its_peak() -> None:
    calls = Calls()
    trimmer = Trimmer(calls)
    for count in range(1, 1001):
        trimmer.connections(count, now=10.0)
    trimmer.connections(600, now=11.0)
    assert calls.count == 0, "still more than a quarter of the peak"
    trimmer.connections(250, now=12.0)
    assert calls.count == 1
    again = trimmer.connections(0, now=12.5)
    assert calls.count == 1, "at most once per interval"
    assert again == 12.0 + MIN_INTERVAL_S, "but asks to be told again when it ends"
    assert trimmer.connections(0, now=again) is None
    assert calls.count == 2, "from 250 to none: the rest goes back too, an interval later"


def test_a_small_load_is_never_worth_a_trim() -> None:
    calls = Calls()
    trimmer = Trimmer(calls)
    for count in [*range(1, MIN_PEAK), *range(MIN_PEAK - 1, -1, -1)]:
        trimmer.connections(count, now=100.0 + count)
    assert calls.count == 0


def test_without_malloc_trim_nothing_happens() -> None:
    trimmer = Trimmer(None)  # a libc without malloc_trim
    for count in (1000, 0):
        trimmer.connections(count, now=50.0)
    assert trimmer.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibcs_malloc_trim_is_found() -> None:
    assert Trimmer.from_libc().available
