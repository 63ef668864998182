"""What one stage of the rehearsal costs: wall time, peak memory and file bytes.

Peak memory is the process's peak resident set (``VmHWM`` of /proc/self/status) while
the stage runs, after resetting it at the stage's start (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0); ``rss_start`` is what the process held then,
so ``peak - rss_start`` is what the stage added. The resident set counts the pages of a
memory-mapped snapshot the stage has read, which the kernel may drop at will: ``peak_anon``
is the highest anonymous resident memory (``RssAnon``, what cannot be dropped) seen by a
thread reading it every 50 ms. Bytes are the ``rchar``/``wchar``
deltas of /proc/self/io: every read and write call of the process, store files and
the memory-mapped snapshot's writes included, page cache or not (reads through a
memory map are page faults, not read calls, and are not counted).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass
class StageCost:
    stage: str
    seconds: float = 0.0
    peak_rss: int = 0
    rss_start: int = 0
    peak_anon: int = 0
    read_bytes: int = 0
    written_bytes: int = 0
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    return _status("VmRSS")


def _io() -> tuple[int, int]:
    values = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            values[key] = int(value)
    return values["rchar"], values["wchar"]


def _sample_anon(cost: StageCost, done: threading.Event) -> None:
    while True:
        cost.peak_anon = max(cost.peak_anon, _status("RssAnon"))
        if done.wait(0.05):
            return


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@contextmanager
def measured(stage: str, costs: list[StageCost]) -> Iterator[StageCost]:
    """Measures the ``with`` block as ``stage`` and appends it to ``costs``; the block
    may add ``notes`` to what it yields. Progress goes to stderr."""
    gc.collect()
    cost = StageCost(stage)
    _reset_peak()
    cost.rss_start = rss()
    read0, written0 = _io()
    print(f"[scale] {stage} ...", file=sys.stderr, flush=True)
    done = threading.Event()
    sampler = threading.Thread(target=_sample_anon, args=(cost, done), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        done.set()
        sampler.join()
    cost.seconds = time.perf_counter() - t0
    # The kernel syncs its RSS counters lazily: the high-water mark may lag a reading
    # (the sampler's included).
    cost.peak_rss = max(_status("VmHWM"), cost.rss_start, rss(), cost.peak_anon)
    read1, written1 = _io()
    cost.read_bytes, cost.written_bytes = read1 - read0, written1 - written0
    costs.append(cost)
    print(
        f"[scale] {stage}: {cost.seconds:.1f} s, peak {cost.peak_rss / 2**30:.2f} GiB "
        f"({cost.peak_anon / 2**30:.2f} anonymous), "
        f"read {cost.read_bytes / 2**20:.0f} MiB, written {cost.written_bytes / 2**20:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
