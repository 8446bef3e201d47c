"""Per-response counters, kept as plain numbers on the request path (compiled with mypyc).

Every response updates a counter by status code and a latency histogram.  Through
prometheus_client objects that costs about 3 us per response (label lookup, locks);
these plain updates cost a fraction of that, and ``metrics`` converts them at scrape
time.  Its own module so that mypyc can compile it without pulling prometheus_client in.
"""

from __future__ import annotations

# Latency buckets for a localhost hop: dense below 10 ms, coarse up to a minute.  Not
# Final: mypyc folds a Final tuple of floats into each use, rebuilding it every time, and
# left the name unset for a plain read (a NameError at start-up).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)


class ResponseStats:
    """Responses by status code and a latency histogram, exported at scrape time.

    Counts by code are a list indexed by the code (llhttp reads three digits, and the
    proxy's own codes are three digits too), and the bucket is found by a loop that stops
    at the first bound: a few native steps, where a dict of boxed ints and a call to
    ``bisect`` cost about 3,000 instructions per response (bench_instructions.py)."""

    __slots__ = ("_bounds", "bucket_counts", "count", "count_by_code", "sum_s")

    def __init__(self) -> None:
        self._bounds = list(DURATION_BUCKETS)  # read per response: a native list
        self.count_by_code = [0] * 1000
        self.bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.count = 0

    @property
    def by_code(self) -> dict[int, int]:
        """The codes seen, with their counts (for the scrape)."""
        return {code: n for code, n in enumerate(self.count_by_code) if n}

    def observe(self, status: int, duration_s: float) -> None:
        if 0 <= status < 1000:
            self.count_by_code[status] += 1
        bucket = 0
        for bound in self._bounds:  # most responses stop at the first bounds
            if duration_s <= bound:
                break
            bucket += 1
        self.bucket_counts[bucket] += 1
        self.sum_s += duration_s
        self.count += 1
