"""Unit tests for the rollout simulation's sans-IO parts: the report, the demo's text,
the progress line and the simulated Service."""

from __future__ import annotations

import io

import pytest

from proxy.rollout import report
from proxy.rollout.demo import ProgressPrinter, render
from proxy.rollout.endpoints import Endpoints, NoEndpoints
from proxy.rollout.report import Event, Progress, ScenarioResult
from proxy.rollout.scenario import RolloutConfig

NAIVE = ScenarioResult("naive", requests=1000, retries=3,
                       failures={"connection refused": 25, "cut mid-response": 2},
                       rotations=0, drain_s=0.0004,
                       events=(Event(0.0, "SIGTERM to pod A"), Event(0.0, "pod A exited")))
DRAIN_PROXY = ScenarioResult("drain-proxy", requests=987, retries=0, failures={},
                             rotations=12, drain_s=1.912, window_s=1.5,
                             events=(Event(1.5, "draining"), Event(-0.5, "load starts"),
                                     Event(0.0, "SIGTERM to pod A"), Event(0.0, "propagating")))


@pytest.mark.parametrize(("requests", "failed", "expected"), [
    (1000, 0, "100.00 %"),
    (1_000_000, 1, "99.99 %"),  # truncated: a failure never prints as 100.00 %
    (299_988, 8_182, "97.27 %"),  # the seeds' kubectl drain measurement
    (3, 3, "0.00 %"),
])
def test_success_ratio_is_truncated_to_two_decimals(requests: int, failed: int,
                                                    expected: str) -> None:
    result = ScenarioResult("x", requests, 0, {"reset": failed} if failed else {}, 0, 0.0)
    assert report.format_ratio(result.success_ratio) == expected


def test_no_requests_has_no_ratio() -> None:
    result = ScenarioResult("x", 0, 0, {}, 0, 0.0)
    assert result.success_ratio is None and report.format_ratio(None) == "-"


def test_table_aligns_numbers_right_under_their_headers() -> None:
    lines = report.format_table([NAIVE, DRAIN_PROXY]).splitlines()
    assert lines[0].split() == ["setup", "requests", "failed", "success", "retried",
                                "rotations", "window", "drain"]
    assert lines[1].split() == ["naive", "1000", "27", "97.30", "%", "3", "0", "-", "0.00",
                                "s"]
    assert lines[2].split() == ["drain-proxy", "987", "0", "100.00", "%", "0", "12", "1.50",
                                "s", "1.91", "s"]
    assert len({len(line) for line in lines}) == 1  # every column ends in the same place
    for header in ("requests", "failed", "rotations"):
        end = lines[0].index(header) + len(header)
        assert all(line[end - 1] != " " and line[end:end + 1] in ("", " ") for line in lines)


def test_markdown_table_has_one_row_per_setup_and_right_aligned_numbers() -> None:
    lines = report.format_markdown([NAIVE, DRAIN_PROXY]).splitlines()
    assert lines[0] == ("| setup | requests | failed | success | retried | rotations | window "
                        "| drain |")
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[3] == "| drain-proxy | 987 | 0 | 100.00 % | 0 | 12 | 1.50 s | 1.91 s |"


def test_causes_list_only_setups_that_failed_biggest_first() -> None:
    assert report.format_causes([NAIVE, DRAIN_PROXY]) == (
        "failures by cause:\n  naive: connection refused 25, cut mid-response 2")
    assert report.format_causes([DRAIN_PROXY]) == ""


def test_timeline_is_in_time_order_with_signed_seconds_and_stable_ties() -> None:
    assert report.format_timeline(DRAIN_PROXY.events).splitlines() == [
        "   -0.50 s  load starts",
        "   +0.00 s  SIGTERM to pod A",
        "   +0.00 s  propagating",
        "   +1.50 s  draining",
    ]


def test_progress_line_names_the_setup_and_the_counts() -> None:
    line = report.format_progress(Progress("preStop sleep", 2, 3, 1.26, 523, 12, 3,
                                           "preStop sleep"))
    assert line == ("[2/3] preStop sleep  +1.3 s  requests   523  failed   12  retried   3  "
                    "pod A: preStop sleep")


def test_json_carries_the_figures_causes_and_timeline() -> None:
    [entry] = report.to_json([NAIVE])
    assert entry["failed"] == 27 and entry["success_ratio"] == 0.973
    assert entry["failures_by_cause"] == {"connection refused": 25, "cut mid-response": 2}
    assert entry["timeline"] == [{"at_seconds": 0.0, "event": "SIGTERM to pod A"},
                                 {"at_seconds": 0.0, "event": "pod A exited"}]


def test_demo_text_shows_the_drain_proxy_timeline_and_every_setup() -> None:
    text = render(RolloutConfig(), [NAIVE, DRAIN_PROXY])
    assert "Timeline of the drain-proxy run" in text and "+1.50 s  draining" in text
    assert report.format_table([NAIVE, DRAIN_PROXY]) in text
    assert "naive: connection refused 25" in text
    assert "Next: drain-proxy demo --window 0.5" in text
    assert "adaptive window" not in text.split("Setups:")[1].split("\n\n", 1)[1]
    assert all(len(line) <= 100 for line in text.splitlines())


def test_demo_text_puts_the_adaptive_window_next_to_the_fixed_one() -> None:
    adaptive = ScenarioResult("drain-proxy adaptive", requests=990, retries=0, failures={},
                              rotations=11, drain_s=1.4, window_s=1.22)
    text = render(RolloutConfig(), [NAIVE, DRAIN_PROXY, adaptive])
    assert ("The adaptive window ended after 1.22 s, once routing had moved (at +1 s):\n"
            "0.28 s before this run's fixed 1.50 s window, and 8.78 s before the default 10 s "
            "one.") in text
    assert "(drain: 1.40 s\nagainst 1.91 s here)" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_demo_explains_a_window_shorter_than_the_routing_delay() -> None:
    text = render(RolloutConfig(propagation_delay_s=1.0, window_s=0.5), [NAIVE])
    assert "Timeline of the naive run" in text
    assert "pod A refused connections" in text and "Next:" not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(index: int, at_s: float, done: bool = False) -> Progress:
    return Progress("naive", index, 3, at_s, 10, 0, 0, "serving", done)


def test_progress_is_redrawn_in_place_on_a_terminal() -> None:
    stream = _Terminal()
    printer = ProgressPrinter(stream)
    for at_s in (-0.5, -0.4):
        printer(_progress(1, at_s))
    printer(_progress(1, 2.2, done=True))
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().count("\n") == 1
    assert stream.getvalue().endswith("pod A: serving\n")


def test_progress_without_a_terminal_is_a_plain_line_now_and_then() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    for tick in range(25):  # 2.5 s of 0.1 s ticks
        printer(_progress(1, -0.5 + tick / 10))
    printer(_progress(1, 2.0, done=True))
    printer(_progress(2, -0.5))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[2] for line in lines] == ["-0.5", "+0.5", "+1.5", "+2.0", "-0.5"]


def test_endpoints_round_robin_and_forget_a_removed_pod() -> None:
    endpoints = Endpoints({"A": 1001, "B": 1002})
    assert [endpoints.pick() for _ in range(3)] == [("A", 1001), ("B", 1002), ("A", 1001)]
    endpoints.remove("A")
    assert endpoints.names == ("B",)
    assert {endpoints.pick() for _ in range(3)} == {("B", 1002)}
    endpoints.remove("B")
    with pytest.raises(NoEndpoints):
        endpoints.pick()
