"""Peak memory of a block of work, for the fidelity-vs-speed figures and the benchmarks."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory growth over a block of work, in MB: CUDA's allocator peak on a GPU, and the
    process's peak resident set over its resident set at the start on the host.

    The host peak is exact where Linux lets a process reset its high-water mark (writing 5 to
    ``/proc/self/clear_refs``, then reading ``VmHWM``); elsewhere it is ``ru_maxrss`` minus the
    start, an upper bound. ``how`` says which. Use as ``with PeakMemory(device) as memory:``
    (then ``memory.peak_mb``) or with :meth:`start` and :meth:`stop`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.how = "VmHWM reset via /proc/self/clear_refs"
        self.peak_mb = float("nan")

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    @staticmethod
    def _maxrss_kb() -> int:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value // 1024 if sys.platform == "darwin" else value  # bytes on macOS

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_baseline = torch.cuda.memory_allocated(self.device)
        self._baseline_kb = self._status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._reset = self._baseline_kb is not None
        except OSError:
            self._reset = False
        if not self._reset:
            self.how = "ru_maxrss minus RSS at the start (an upper bound: no peak reset here)"
            if self._baseline_kb is None:
                self._baseline_kb = self._maxrss_kb()

    def stop(self) -> dict[str, float]:
        """``host_peak_mb`` and ``peak_mb`` (the device's on CUDA, else the host's)."""
        peak_kb = self._status_kb("VmHWM") if self._reset else None
        if peak_kb is None:
            peak_kb = self._maxrss_kb()
        out = {"host_peak_mb": round(max(0, peak_kb - self._baseline_kb) / 1024, 1)}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            out["peak_mb"] = round((torch.cuda.max_memory_allocated(self.device) - self._cuda_baseline) / 2**20, 1)
        else:
            out["peak_mb"] = out["host_peak_mb"]
        self.peak_mb = out["peak_mb"]
        return out

    def __enter__(self) -> "PeakMemory":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
