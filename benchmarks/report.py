"""Turn repetitions into medians, and medians into markdown tables and a JSON file.

Medians over interleaved repetitions stop one noisy run from deciding a row; the req/s min-max
spread is printed next to them so a reader can tell when the medians themselves are noise.
Every delta is taken against a row of the same run, never against numbers from another run.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tcp_targets as tcp
from app import Body
from load import Sample
from targets import Key, Target

HEADER = ("| target | conns | req/s (median) | spread | p50 us | p99 us "
          "| added p50 vs direct (us) | proxy CPU us/req | CPU ratio vs {base} |")
Medians = dict[Key, dict[str, "Stats"]]  # (conns, body) -> target name -> medians


@dataclass
class Stats(Sample):
    """Medians over repetitions; the req/s min/max say how far the medians can be trusted."""

    rps_min: float = 0.0
    rps_max: float = 0.0

    @classmethod
    def of(cls, ss: list[Sample]) -> Stats:
        """Aggregate repetitions (requests/errors summed); CPU only where it was measurable."""
        med = statistics.median
        cpu = [s.cpu_us_per_req for s in ss if s.cpu_us_per_req is not None]
        rps = [s.rps for s in ss]
        p50, p75, p90, p99 = (med(col) for col in zip(*(s.percentiles() for s in ss), strict=True))
        return cls(med(rps), p50, p75, p90, p99, sum(s.requests for s in ss),
                   sum(s.errors for s in ss), med(cpu) if cpu else None, min(rps), max(rps))


def medians(targets: list[Target]) -> Medians:
    """Stats per measured cell, targets in the order given (the order of rows and legends)."""
    out: Medians = {}
    for t in targets:
        for key, ss in t.samples.items():
            out.setdefault(key, {})[t.name] = Stats.of(ss)
    return out


def row(label: str, c: int, m: Stats, direct: Stats | None, base: Stats | None) -> str:
    """One table row; deltas only where the reference row was measured."""
    added = f"{m.p50_us - direct.p50_us:+.0f}" if direct and m is not direct else "-"
    cpu, ncpu = m.cpu_us_per_req, base.cpu_us_per_req if base else None
    ratio = f"{cpu / ncpu:.2f}x" if cpu is not None and ncpu else "-"
    return (f"| {label} | {c} | {m.rps:.0f} | {m.rps_min:.0f}-{m.rps_max:.0f} | {m.p50_us:.0f}"
            f" | {m.p99_us:.0f} | {added} | {'-' if cpu is None else f'{cpu:.1f}'} | {ratio} |")


def table(targets: list[Target], med: Medians, conns_list: list[int], body: str,
          base: str) -> str:
    """Markdown table for one body size; the CPU ratio is against `base` at the same conns."""
    lines = [HEADER.format(base=base), "|" + "---|" * 9]
    for c in conns_list:
        cell = med.get((c, body), {})
        for t in targets:
            if t.name not in cell:
                lines.append(f"| {t.label} | {c} | {t.error or 'no data'} |" + " - |" * 6)
                continue
            lines.append(row(t.label, c, cell[t.name], cell.get("direct"), cell.get(base)))
    return "\n".join(lines)


def tables(targets: list[Target], med: Medians, conns_list: list[int],
           bodies: list[Body]) -> str:
    """Every table: per mode (HTTP, TCP), one per body size, each under a markdown heading."""
    return "\n\n".join(
        f"### {title.format(body=body.label)}\n\n{table(ts, med, conns_list, body.name, base)}"
        for title, base, ts in tcp.table_groups(targets) for body in bodies)


def write_json(path: Path, meta: dict[str, Any], targets: list[Target], med: Medians) -> None:
    """Medians, every repetition's raw sample, why a target stopped or never ran, and the setup."""
    results = [{"target": t.name, "conns": c, "body": body, **asdict(med[c, body][t.name]),
                "samples": [asdict(s) for s in ss]}
               for t in targets for (c, body), ss in t.samples.items()]
    errors = {t.name: t.error for t in targets if t.error}
    doc = {"meta": meta, "results": results, "errors": errors}
    path.write_text(json.dumps(doc, indent=2) + "\n")
