"""Tuning progress: a one-line bar on a terminal, plain lines otherwise (logs, CI)."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    def __init__(self, *, total: int, enabled: bool = True, time_budget_s: float | None = None, stream=None,
                 every_s: float = 10.0):
        self.total = max(total, 1)
        self.enabled = enabled
        self.time_budget_s = time_budget_s
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.time()
        self.every_s = every_s
        self._last_line = 0.0

    def _remaining(self, done: int) -> float:
        elapsed = time.time() - self.start
        by_trials = elapsed / max(done, 1) * (self.total - done)
        if self.time_budget_s is not None:
            return max(0.0, min(by_trials, self.time_budget_s - elapsed))
        return by_trials

    def update(self, done: int, task_name: str, task_best_s: float, task_flops: float, latency_s: float) -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        gflops = task_flops / task_best_s / 1e9 if math.isfinite(task_best_s) and task_best_s > 0 else 0.0
        lat = f"{latency_s * 1e3:.3f} ms" if math.isfinite(latency_s) else "n/a"
        text = (f"trials {done}/{self.total}  est. latency {lat}  | {task_name[:36]} best "
                f"{task_best_s * 1e6:.1f} us {gflops:.1f} GFLOP/s | {elapsed:.0f}s elapsed, ~{self._remaining(done):.0f}s left")
        if self.tty:
            width = 24
            filled = int(width * done / self.total)
            self.stream.write("\r[" + "#" * filled + "." * (width - filled) + "] " + text[:140] + "\x1b[K")
            self.stream.flush()
        elif time.time() - self._last_line >= self.every_s or done >= self.total:
            self._last_line = time.time()
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
