"""Peak memory of a block of work: resident memory on CPU (sampled), allocator peak on CUDA."""

from __future__ import annotations

import os
import threading


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; falls back to the lifetime peak)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: ``peak_rss`` (bytes, sampled every ``interval`` s) and ``peak_cuda`` (bytes).

    Example:
        >>> with PeakMemory() as pm:
        ...     x = bytearray(10**7)
        >>> pm.peak_rss > 0
        True
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, rss_bytes())

    def __enter__(self):
        self.peak_rss = rss_bytes()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                self.peak_cuda = 0
        except ImportError:
            pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        if self.peak_cuda is not None:
            import torch

            self.peak_cuda = int(torch.cuda.max_memory_allocated())
        return False
