"""GET /metrics: the server's counters in the Prometheus text exposition format (version 0.0.4).

    dscoder_requests_total{route, status}      answered requests (a stream counts with the status it started with)
    dscoder_queue_depth                        requests waiting for a batch row
    dscoder_running_sequences                  sequences in the decode batch
    dscoder_generated_tokens_total             tokens sampled (including those later cut by a stop string)
    dscoder_prompt_tokens_total                prompt tokens of the requests that started
    dscoder_prompt_tokens_cached_total         of those, tokens reused from a kept prefix instead of prefilled
    dscoder_cancelled_total                    requests cancelled (client gone) or timed out while queued
    dscoder_prefill_cpu_seconds_total          the scheduler thread's CPU time in prefill forwards
    dscoder_decode_cpu_seconds_total           ... and in decode forwards (one per step, every running row)
    dscoder_decode_steps_total                 decode forwards
    dscoder_decode_rows_total                  rows summed over decode forwards (/ steps: the mean batch)
    dscoder_time_to_first_token_seconds        histogram, from arrival to the first sampled token
"""
from __future__ import annotations

import bisect
import threading
from collections import Counter

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)          # per bucket, the last one is +Inf
        self.ttft_sum = 0.0

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[(route, status)] += 1

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self.ttft_sum += seconds

    def render(self, stats: dict[str, float] | None) -> str:
        """The exposition text; `stats` is `Scheduler.stats()` (None while the model loads)."""
        s = stats or {}
        lines = ["# HELP dscoder_requests_total Answered HTTP requests.", "# TYPE dscoder_requests_total counter"]
        with self.lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'dscoder_requests_total{{route="{route}",status="{status}"}} {n}')
            ttft, total = list(self.ttft), self.ttft_sum
        for name, kind, key in [("queue_depth", "gauge", "queued"), ("running_sequences", "gauge", "running"),
                                ("generated_tokens_total", "counter", "generated_tokens"),
                                ("prompt_tokens_total", "counter", "prompt_tokens"),
                                ("prompt_tokens_cached_total", "counter", "cached_prompt_tokens"),
                                ("cancelled_total", "counter", "cancelled"),
                                ("prefill_cpu_seconds_total", "counter", "prefill_seconds"),
                                ("decode_cpu_seconds_total", "counter", "decode_seconds"),
                                ("decode_steps_total", "counter", "decode_steps"),
                                ("decode_rows_total", "counter", "decode_rows")]:
            lines += [f"# TYPE dscoder_{name} {kind}", f"dscoder_{name} {s.get(key, 0)}"]
        lines.append("# TYPE dscoder_time_to_first_token_seconds histogram")
        cum = 0
        for le, n in zip([*map(str, TTFT_BUCKETS), "+Inf"], ttft):
            cum += n
            lines.append(f'dscoder_time_to_first_token_seconds_bucket{{le="{le}"}} {cum}')
        lines += [f"dscoder_time_to_first_token_seconds_sum {total}",
                  f"dscoder_time_to_first_token_seconds_count {cum}"]
        return "\n".join(lines) + "\n"
