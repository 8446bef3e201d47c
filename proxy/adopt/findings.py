"""What ``drain-proxy check`` reports: findings as plain data, and their two printed forms.

A finding is data, not a log line, so that the text and the JSON output say the same thing
and a test can assert on the ``id`` alone.  Ids are stable: scripts and CI filter on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

ERROR = "error"
WARNING = "warning"
INFO = "info"
# Most severe first: the order findings are printed in.
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong (or worth knowing) about one object, and how to fix it."""

    severity: str
    id: str
    kind: str
    name: str
    namespace: str
    message: str
    fix: str


def ordered(findings: Sequence[Finding]) -> list[Finding]:
    """Errors first, then by object and id, so that output is stable between runs."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.namespace, f.kind,
                                           f.name, f.id, f.message))


def as_text(findings: Sequence[Finding]) -> str:
    """One line per finding, then a summary line."""
    lines = [f"{f.severity} {f.id} {f.kind}/{f.name} ({f.namespace}): {f.message}; fix: {f.fix}"
             for f in findings]
    counts = {severity: sum(f.severity == severity for f in findings) for severity in SEVERITIES}
    lines.append(f"{counts[ERROR]} error(s), {counts[WARNING]} warning(s), {counts[INFO]} info")
    return "\n".join(lines) + "\n"


def as_json(findings: Sequence[Finding]) -> str:
    """A JSON list of objects with exactly the fields of ``Finding``."""
    return json.dumps([asdict(f) for f in findings], indent=2) + "\n"
