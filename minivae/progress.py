"""A small progress bar on stderr (no dependency): count, rate, ETA and a live metric."""
import sys
import time


class Progress:
    def __init__(self, total, desc="", enabled=True, stream=None):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty() if hasattr(self.stream, "isatty") else enabled
        self.start = self.last = time.perf_counter()
        self.metric = ""

    def update(self, n=1, **metrics):
        self.n += n
        if metrics:
            self.metric = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in metrics.items())
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.n >= self.total):
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else 0
            self.stream.write(f"\r{self.desc} {self.n}/{self.total} [{now - self.start:.0f}s<"
                              f"{eta:.0f}s, {rate:.3g}/s] {self.metric}\033[K")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
