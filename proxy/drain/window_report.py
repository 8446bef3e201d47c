"""How a propagation window ended, in words (the log line) and as data (``/drain``).

An operator reads these to trust, or tune, the adaptive window: the line says why it
ended and which source decided it; the summary lists the sources it judged.
"""

from __future__ import annotations

import math
from typing import Final

from proxy.drain.window import SourceState, SourceVerdict, WindowDecision, WindowEnd

SOURCES_LISTED: Final = 32  # in the /drain summary, the most recent first
_NAMED: Final = 3  # addresses named in the log line, per state


def window_summary(reason: WindowEnd, lasted_s: float, trigger_at: float,
                   decision: WindowDecision | None) -> dict[str, object]:
    """The ``propagation_window`` part of the /drain summary; times are seconds from the
    trigger (negative: before it)."""
    summary: dict[str, object] = {"ended_by": reason.value, "lasted_seconds": lasted_s,
                                  "adaptive": decision is not None}
    if decision is None:
        return summary
    verdicts = _most_recent_first(decision.sources)
    summary["sources_judged"] = len(verdicts)
    summary["sources_over_cap"] = decision.overflowed
    summary["sources"] = [{
        "address": v.address,
        "state": v.state.value,
        "arrivals_in_window": v.arrivals_since_trigger,
        "last_arrival_seconds": None if v.last_arrival is None
        else round(v.last_arrival - trigger_at, 3),
        "quiet_after_seconds": None if v.quiet_at is None else round(v.quiet_at - trigger_at, 3),
    } for v in verdicts[:SOURCES_LISTED]]
    return summary


def explain_window_end(reason: WindowEnd, trigger_at: float, decision: WindowDecision | None,
                       maximum_s: float) -> str:
    """Why the window ended, for the log line that follows "ended after N s: "."""
    if reason is WindowEnd.FIXED:
        return "fixed length (--propagation-window; --adaptive-window ends it once routing " \
               "has moved)"
    if reason is WindowEnd.FORCED:
        return "a second signal"
    verdicts = _most_recent_first(decision.sources if decision is not None else ())
    if reason is WindowEnd.NO_TRAFFIC:
        return (f"no new connection in the window or in the {maximum_s:g} s before it: "
                f"nothing to wait for")
    if reason is WindowEnd.ROUTING_MOVED:
        last = verdicts[0]
        arrival = "" if last.last_arrival is None else \
            f", last arrival {last.address} at {last.last_arrival - trigger_at:+.2f} s"
        return f"routing moved: {_count(len(verdicts), 'source')} quiet{arrival}"
    holding = []
    if decision is not None and decision.overflowed:
        holding.append("new sources past the cap of the ones kept")
    for state, words in ((SourceState.SPARSE, "too sparse to judge"),
                         (SourceState.SENDING, "still sending"),
                         (SourceState.ANSWERING, "waiting for answers")):
        named = [v.address for v in verdicts if v.state is state]
        if named:
            shown = ", ".join(named[:_NAMED]) + (", ..." if len(named) > _NAMED else "")
            holding.append(f"{_count(len(named), 'source')} {words} ({shown})")
    return "maximum reached: " + "; ".join(holding)


def _most_recent_first(verdicts: tuple[SourceVerdict, ...]) -> list[SourceVerdict]:
    """By last arrival, latest first; sources only seen on older connections last."""
    return sorted(verdicts, key=lambda v: -math.inf if v.last_arrival is None
                  else v.last_arrival, reverse=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
