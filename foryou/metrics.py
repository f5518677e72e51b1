"""Prometheus text-format metrics, kept in process (no dependency): counters and latency histograms."""

from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_PROBE_S = 0.01  # the event-loop lag probe's sleep
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # lags of seconds or more


class Histogram:
    """Counts of observations per bucket of `bounds` (and +Inf), with their sum: for parts of the
    engine that measure something themselves (the model's update lag)."""

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.counters: defaultdict[str, float] = defaultdict(float)
        # How late the event loop woke a probe that sleeps LAG_PROBE_S: the longest any one piece of
        # work (a request, a periodic task) held the loop, as everything else waited.
        self.lag = [0] * (len(BUCKETS) + 1)
        self.lag_sum = 0.0
        self.lag_max = 0.0
        # How long each step of a task (a request's, or the periodic work's) held the loop, by kind.
        self.holds: dict[str, list[int]] = {}
        self.hold_sum: defaultdict[str, float] = defaultdict(float)
        self.hold_max: defaultdict[str, float] = defaultdict(float)

    def observe_hold(self, kind: str, seconds: float) -> None:
        hist = self.holds.get(kind)
        if hist is None:
            hist = self.holds[kind] = [0] * (len(BUCKETS) + 1)
        hist[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.hold_sum[kind] += seconds
        self.hold_max[kind] = max(self.hold_max[kind], seconds)

    def observe_lag(self, seconds: float) -> None:
        self.lag[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.lag_sum += seconds
        self.lag_max = max(self.lag_max, seconds)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = [0] * (len(BUCKETS) + 1)
        hist[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

    def inc(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] += amount

    def render(self, gauges: dict[str, float],
               labelled: dict[str, tuple[str, str, dict[str, float]]] | None = None,
               histograms: dict[str, Histogram] | None = None) -> str:
        """The exposition: request counts and latencies, the counters, `gauges`, `labelled` series
        (name -> (type, label, {label value: value}), e.g. failures per periodic task) and other
        parts' `histograms`."""
        lines = ["# TYPE foryou_http_requests_total counter"]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(f'foryou_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}')
        lines.append("# TYPE foryou_http_request_seconds histogram")
        for route, hist in sorted(self.latency.items()):
            lines += _histogram("foryou_http_request_seconds", f'route="{route}"', hist, self.latency_sum[route])
        lines.append("# TYPE foryou_event_loop_lag_seconds histogram")
        lines += _histogram("foryou_event_loop_lag_seconds", "", self.lag, self.lag_sum)
        lines += ["# TYPE foryou_event_loop_lag_max_seconds gauge",
                  f"foryou_event_loop_lag_max_seconds {self.lag_max:.6f}"]
        lines.append("# TYPE foryou_loop_hold_seconds histogram")
        for kind, hist in sorted(self.holds.items()):
            lines += _histogram("foryou_loop_hold_seconds", f'kind="{kind}"', hist, self.hold_sum[kind])
        lines.append("# TYPE foryou_loop_hold_max_seconds gauge")
        lines += [f'foryou_loop_hold_max_seconds{{kind="{k}"}} {v:.6f}' for k, v in sorted(self.hold_max.items())]
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE foryou_{name} counter", f"foryou_{name} {value:g}"]
        for name, value in sorted(gauges.items()):
            shown = "NaN" if value != value else f"{value:g}"  # NaN: no value yet (Prometheus spelling)
            lines += [f"# TYPE foryou_{name} gauge", f"foryou_{name} {shown}"]
        for name, h in sorted((histograms or {}).items()):
            lines += [f"# TYPE foryou_{name} histogram", *_histogram(f"foryou_{name}", "", h.counts, h.total, h.bounds)]
        for name, (kind, label, values) in sorted((labelled or {}).items()):
            lines.append(f"# TYPE foryou_{name} {kind}")
            lines += [f'foryou_{name}{{{label}="{k}"}} {v:g}' for k, v in sorted(values.items())]
        return "\n".join(lines) + "\n"


def _histogram(name: str, labels: str, hist: list[int], total: float,
               bounds: tuple[float, ...] = BUCKETS) -> list[str]:
    """A histogram's lines: cumulative buckets, sum and count (`labels`: `k="v"` pairs, or "")."""
    out, cumulative, sep = [], 0, "," if labels else ""
    for bound, count in zip((*bounds, float("inf")), hist, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
    tail = f"{{{labels}}}" if labels else ""
    return [*out, f"{name}_sum{tail} {total:.6f}", f"{name}_count{tail} {cumulative}"]
