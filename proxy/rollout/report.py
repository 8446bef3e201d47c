"""What a rollout simulation measured, and how it is printed.

Sans-IO: the simulation hands over plain counts and timestamped events, and
everything a reader sees (the comparison table, the timeline, the progress line)
is formatted here, so the figures the README quotes are unit-tested as text.

The columns answer the questions an operator asks after a rollout:

- **failed**: requests that got no complete 2xx response: a refused connection,
  a connection closed before or during the response, an error status.
- **success**: truncated, not rounded, so a single failure can never print as
  ``100.00 %``.
- **retried**: requests that failed on a *reused* keep-alive connection before any
  response byte and were sent again on a new connection.  RFC 9112 section 9.3.1
  (via RFC 9110 section 9.2.2) lets a client do that for idempotent methods; these
  GETs survived, a POST would have failed.  Counted apart so retries never hide
  damage.
- **rotations**: keep-alive connections the server ended with ``Connection: close``
  because of its request budget or age limit, while serving normally (not
  the drain's closes): how keep-alive clients get rebalanced.  ``-`` when unknown: an
  external sidecar's connections are not observed from inside.
- **window**: how long pod A went on accepting new connections after its SIGTERM: the
  preStop sleep, or drain-proxy's propagation window as it ended (``-`` for a pod that
  stops accepting at once, or a sidecar not observed from inside).
- **drain**: from pod A's SIGTERM until the pod had fully exited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened during a run, ``at_s`` seconds after pod A's SIGTERM."""

    at_s: float
    text: str


@dataclass(frozen=True)
class ScenarioResult:
    """One setup's run: what the clients saw and how long pod A took to go away."""

    setup: str
    requests: int
    retries: int
    failures: Mapping[str, int]  # by cause
    rotations: int | None  # None: not observable (an external sidecar)
    drain_s: float
    events: tuple[Event, ...] = field(default=())
    window_s: float | None = None  # None: no window, or not observable

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def success_ratio(self) -> float | None:
        """Share of requests that succeeded; None when none was sent."""
        if self.requests == 0:
            return None
        return (self.requests - self.failed) / self.requests


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for the live progress line, taken while setup ``index`` of ``total`` runs."""

    setup: str
    index: int
    total: int
    at_s: float  # from pod A's SIGTERM; negative before it
    requests: int
    failed: int
    retries: int
    pod_a: str  # pod A's state: serving, preStop sleep, a drain phase, exited
    done: bool = False


COLUMNS = ("setup", "requests", "failed", "success", "retried", "rotations", "window",
           "drain")


def format_ratio(ratio: float | None) -> str:
    """A percentage with two decimals, truncated: 1 failure in 10^6 prints 99.99 %."""
    if ratio is None:
        return "-"
    return f"{math.floor(ratio * 10000) / 100:.2f} %"


def _row(result: ScenarioResult) -> tuple[str, ...]:
    return (result.setup, str(result.requests), str(result.failed),
            format_ratio(result.success_ratio), str(result.retries),
            "-" if result.rotations is None else str(result.rotations),
            "-" if result.window_s is None else f"{result.window_s:.2f} s",
            f"{result.drain_s:.2f} s")


def format_table(results: Sequence[ScenarioResult]) -> str:
    """Aligned plain text for a terminal: names left, numbers right."""
    rows = [COLUMNS, *(_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_markdown(results: Sequence[ScenarioResult]) -> str:
    """The same table in Markdown, for benchmark write-ups."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    lines += ["| " + " | ".join(_row(result)) + " |" for result in results]
    return "\n".join(lines)


def format_causes(results: Sequence[ScenarioResult]) -> str:
    """Why requests failed, one line per setup that had failures ("" if none did)."""
    lines = []
    for result in results:
        causes = sorted(result.failures.items(), key=lambda item: (-item[1], item[0]))
        listed = ", ".join(f"{cause} {count}" for cause, count in causes if count)
        if listed:
            lines.append(f"  {result.setup}: {listed}")
    return "\n".join(["failures by cause:", *lines]) if lines else ""


def format_timeline(events: Sequence[Event]) -> str:
    """One line per event, in time order, with the time since SIGTERM."""
    ordered = sorted(events, key=lambda event: event.at_s)  # stable: ties keep their order
    return "\n".join(f"  {event.at_s:+6.2f} s  {event.text}" for event in ordered)


def format_progress(progress: Progress) -> str:
    """The live line: which setup, when, how many requests and failures so far."""
    return (f"[{progress.index}/{progress.total}] {progress.setup:<13} "
            f"{progress.at_s:+5.1f} s  requests {progress.requests:>5}  "
            f"failed {progress.failed:>4}  retried {progress.retries:>3}  "
            f"pod A: {progress.pod_a}")


def to_json(results: Sequence[ScenarioResult]) -> list[dict[str, object]]:
    """Plain data for ``--json``: the table's figures, the causes and the timeline."""
    return [{
        "setup": result.setup,
        "requests": result.requests,
        "failed": result.failed,
        "success_ratio": result.success_ratio,
        "retries": result.retries,
        "rotations": result.rotations,
        "window_seconds": None if result.window_s is None else round(result.window_s, 6),
        "drain_seconds": round(result.drain_s, 6),
        "failures_by_cause": dict(result.failures),
        "timeline": [{"at_seconds": round(e.at_s, 6), "event": e.text} for e in result.events],
    } for result in results]
