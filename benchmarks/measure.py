"""Timing and memory of whole commands: several runs, median and min–max, peak RSS.

Each measured command runs under a small wrapper process whose RUSAGE_CHILDREN
max RSS is that command's own peak (resource only reports the largest child
ever waited for, so one wrapper per run keeps runs apart).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"rc": rc, "wall_s": wall, "cpu_s": cpu, "rss_mib": usage.ru_maxrss / 1024}))
"""


class CommandFailed(Exception):
    pass


@dataclass
class Sample:
    name: str
    walls: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    # CPU seconds (user + system, children included): on a shared machine less noisy than wall.
    cpu_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "runs": len(self.walls),
            "median_s": round(self.median, 4),
            "min_s": round(min(self.walls), 4),
            "max_s": round(max(self.walls), 4),
            "peak_rss_mib": round(max(self.rss_mib), 1) if self.rss_mib else None,
            "median_cpu_s": round(statistics.median(self.cpu_s), 4) if self.cpu_s else None,
            "walls_s": [round(w, 4) for w in self.walls],
        }


def run_command(
    name: str,
    argv: list[str],
    runs: int,
    env: dict[str, str] | None = None,
    warmup: int = 0,
    sample: Sample | None = None,
) -> Sample:
    """Run argv `runs` times (after `warmup` unmeasured runs); fail loudly on a non-zero exit."""
    sample = sample or Sample(name)
    full_env = {**os.environ, **(env or {})}
    for i in range(warmup + runs):
        out = subprocess.run(
            [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, env=full_env
        )
        if out.returncode != 0 or not out.stdout.strip():
            raise CommandFailed(f"{name}: wrapper failed: {out.stderr.strip()[-500:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["rc"] != 0:
            raise CommandFailed(f"{name}: {' '.join(argv)} exited {result['rc']}")
        if i >= warmup:
            sample.walls.append(result["wall_s"])
            sample.rss_mib.append(result["rss_mib"])
            sample.cpu_s.append(result["cpu_s"])
    return sample


def time_callable(name: str, fn, runs: int) -> Sample:
    sample = Sample(name)
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sample.walls.append(time.perf_counter() - t)
        sample.cpu_s.append(time.process_time() - c)
    return sample


def ratio(numerator: Sample, denominator: Sample) -> float:
    return numerator.median / denominator.median if denominator.median else float("inf")


def timeline(
    name: str, argv: list[str], env: dict[str, str] | None = None
) -> tuple[Sample, list[tuple[float, str]]]:
    """One run of argv with each stderr line stamped (seconds since start): the critical path of a
    long command, from its own progress lines. Fails loudly on a non-zero exit."""
    sample = Sample(name)
    lines: list[tuple[float, str]] = []
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append((round(time.perf_counter() - started, 1), line.rstrip("\n")))
    rc = proc.wait()
    sample.walls.append(time.perf_counter() - started)
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-10:])
        raise CommandFailed(f"{name}: {' '.join(argv)} exited {rc}:\n{tail}")
    return sample, lines
