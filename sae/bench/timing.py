"""Wall-clock timing that waits for the accelerator."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], steps: int, warmup: int = 3, device: torch.device | str = "cpu"
) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# Peak memory bandwidth, bytes/s, by device name fragment (vendor figures).
_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100": 2.0e12, "A100": 2.0e12}


def peak_bandwidth(device: torch.device | str) -> float | None:
    name = device_name(device)
    for key, bw in _BANDWIDTH.items():
        if key in name:
            return bw
    return None
