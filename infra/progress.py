"""One progress line per stage of a run, for the person at the terminal.

On a terminal (stdout a TTY) a stage is a live tqdm line: done of total, rate, ETA and
whatever the stage adds (a pack's latest train NMSE). Elsewhere (CI, cron, a Prefect
worker) it is a plain log line at most every ``LOG_EVERY_S`` seconds, and one at the end,
so a log shows a stuck run from a slow one without a line per shard.

The counts come from what the run already sees: the driver's own loop over Ray's
results, or the progress the flow records in Prefect; this module only shows them.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The most often a stage writes a plain log line when no one watches a terminal.
LOG_EVERY_S = 10.0


def on_terminal() -> bool:
    return sys.stdout.isatty()


class StageProgress:
    """``update(done, total, **latest)`` with absolute counts; ``close()`` at the end."""

    def __init__(
        self,
        stage: str,
        total: int | None = None,
        unit: str = "",
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        redraw_s: float = 0.1,
    ):
        """``redraw_s``: the least time between two redraws of a terminal line (updates
        in between only move the counts), so a stage may update on every record."""
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self._clock = clock
        self._start = self._logged = clock()
        self._emit = emit or log.info
        self._latest: dict[str, object] = {}
        self._bar = None
        if on_terminal() if tty is None else tty:
            from tqdm import tqdm

            size = shutil.get_terminal_size((100, 24))
            self._bar = tqdm(
                total=total,
                desc=stage,
                unit=f" {unit}" if unit else "it",
                file=sys.stdout,
                mininterval=redraw_s,
                miniters=1 if redraw_s == 0 else None,
                # A terminal that reports no size (a fresh pty) would show nothing at all.
                ncols=size.columns or 100,
                nrows=size.lines or 24,
            )
        self._closed = False

    def update(self, done: int, total: int | None = None, **latest: object) -> None:
        if total is not None:
            self.total = total
        self.done = done
        self._latest.update(latest)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(done - self._bar.n)
        elif self._clock() - self._logged >= LOG_EVERY_S:
            self._log()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._log(final=True)

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self, final: bool = False) -> str:
        """The plain line: ``embedding cs.LG: 2048/19670 papers (14.2/s, ETA 20m41s)``."""
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{rate:.1f}/s"]
        if final:
            parts.append(f"{_duration(elapsed)} in all")
        elif self.total is not None and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        if self._latest:
            parts.append(self._postfix())
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.stage}: {self.done}{of}{unit} ({', '.join(parts)})"

    def _log(self, final: bool = False) -> None:
        self._logged = self._clock()
        self._emit(self.line(final))

    def _postfix(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self._latest.items())


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
