"""Logging: plain text for people, one JSON object per line for pipelines.

Both carry RFC 3339 timestamps in UTC with milliseconds and the offset
(``2026-12-01T17:02:17.474+00:00``), so lines from sidecars on different nodes sort
and parse alike.  Counts travel as fields, not only inside the message: a call passes
``extra=fields(requests_cut=3, ...)``; JSON puts them at the top level of the object,
text appends them as ``key=value``.

Some warnings repeat by the thousand when the app is down (every request fails the
same way); ``RepeatedWarning`` logs the first at once and then one summary line per
interval, so a dead app cannot flood the log.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
from collections import Counter
from typing import Any

FIELDS = "fields"  # the LogRecord attribute the formatters read


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` of a logging call that carries fields."""
    return {FIELDS: values}


def _rfc3339(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the fields log pipelines index on."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _rfc3339(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_rfc3339(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = getattr(record, FIELDS, None)
        if extra:
            line += "".join(f" {key}={value}" for key, value in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RepeatedWarning:
    """A warning of several kinds that may come thousands of times a second: the first of a
    quiet period is logged at once, the rest are counted and summarised once per
    ``interval_s`` (with the last message, so the cause is still in the log)."""

    def __init__(self, logger: logging.Logger, what: str, interval_s: float = 10.0) -> None:
        self._log = logger
        self._what = what  # "upstream errors"
        self.interval_s = interval_s
        self._counts: Counter[str] = Counter()
        self._last = ""
        self._flush: asyncio.TimerHandle | None = None

    def warn(self, kind: str, message: str) -> None:
        if self._flush is None:  # quiet until now: say it at once
            self._log.warning("%s", message, extra=fields(kind=kind))
            self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._summary)
            return
        self._counts[kind] += 1
        self._last = message

    def _summary(self) -> None:
        if self._say(self.interval_s):
            self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._summary)
        else:
            self._flush = None  # a quiet interval: the next one is logged at once again

    def _say(self, over_s: float) -> bool:
        """Log what was counted over the last ``over_s`` seconds; False when nothing was."""
        if not self._counts:
            return False
        total = sum(self._counts.values())
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(self._counts.items()))
        self._log.warning("%d more %s in the last %g s (%s); the last: %s", total,
                          self._what, over_s, by_kind, self._last,
                          extra=fields(repeated=total, **{f"repeated_{kind}": count
                                                          for kind, count in self._counts.items()}))
        self._counts.clear()
        return True

    def close(self) -> None:
        """Stop summarising.  What was counted since the last summary is said now: the process
        is exiting, and errors only the metrics counted would be missing from the log."""
        if self._flush is None:
            return
        loop = asyncio.get_running_loop()
        elapsed = self.interval_s - max(0.0, self._flush.when() - loop.time())
        self._flush.cancel()
        self._flush = None
        self._say(round(elapsed, 3))
