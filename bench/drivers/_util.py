"""What every driver shares: store/config from JSON arguments, and the JSON it prints."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time

START = time.perf_counter()

if os.environ.get("BENCH_TRACEMALLOC"):
    # how much of the peak RSS Python objects explain (the rest: libraries' native memory, malloc)
    import tracemalloc

    tracemalloc.start()


def store_config(spec: str | dict, env_prefix: str = ""):
    from etcdbr.config import StoreConfig

    d = json.loads(spec) if isinstance(spec, str) else dict(spec)
    d.setdefault("env_prefix", env_prefix)
    return StoreConfig(**d)


def quiet_logs(level: str = "WARNING") -> None:
    logging.basicConfig(level=getattr(logging, os.environ.get("BENCH_LOG_LEVEL", level)), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def peak_rss_mib() -> float:
    """High-water RSS of this process's own address space (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec into it,
    so a driver started by a large parent would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(result: dict) -> None:
    result.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    result.setdefault("cpu_seconds", round(cpu_seconds(), 2))
    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        result["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    result.setdefault("process_seconds", round(time.perf_counter() - START, 3))
    print(json.dumps(result), flush=True)
