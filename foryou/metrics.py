"""Prometheus text-format metrics, kept in process (no dependency): counters and latency histograms."""

from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.counters: defaultdict[str, float] = defaultdict(float)

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
               labelled: dict[str, tuple[str, str, dict[str, float]]] | None = None) -> str:
        """The exposition: request counts and latencies, the counters, `gauges`, and `labelled`
        series (name -> (type, label, {label value: value}), e.g. failures per periodic task)."""
        lines = ["# TYPE foryou_http_requests_total counter"]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(f'foryou_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}')
        lines.append("# TYPE foryou_http_request_seconds histogram")
        for route, hist in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'foryou_http_request_seconds_bucket{{route="{route}",le="{le}"}} {cumulative}')
            lines.append(f'foryou_http_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
            lines.append(f'foryou_http_request_seconds_count{{route="{route}"}} {cumulative}')
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE foryou_{name} counter", f"foryou_{name} {value:g}"]
        for name, value in sorted(gauges.items()):
            shown = "NaN" if value != value else f"{value:g}"  # NaN: no value yet (Prometheus spelling)
            lines += [f"# TYPE foryou_{name} gauge", f"foryou_{name} {shown}"]
        for name, (kind, label, values) in sorted((labelled or {}).items()):
            lines.append(f"# TYPE foryou_{name} {kind}")
            lines += [f'foryou_{name}{{{label}="{k}"}} {v:g}' for k, v in sorted(values.items())]
        return "\n".join(lines) + "\n"
