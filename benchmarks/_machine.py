"""The machine and load facts every benchmark's final JSON line carries (so figures are read with their context)."""

from __future__ import annotations

import os
import platform
import time
from typing import Any


def run_info(t_start: float) -> dict[str, Any]:
    """``machine`` (processor x cores), ``platform``, ``load_avg_1min`` now and ``wall_s`` since ``t_start``."""
    return {
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
        "platform": platform.platform(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
