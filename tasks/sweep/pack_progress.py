"""A pack's progress as Prefect records it: a progress artifact of the pack's task run,
whose description holds its step of the total and its cells' latest train NMSE.

The worker writes it (:class:`PackReporter`, the trainer's ``on_log``); the Prefect UI
shows it; the terminal of the run that started the sweep reads it back
(:class:`PackWatcher`), so the step a pack is at travels through Prefect, which carries
the run's other records already, and through no channel of our own.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.progress import StageProgress

log = logging.getLogger(__name__)

#: The most often a pack writes its progress to the Prefect server.
REPORT_EVERY_S = 2.0
#: How often the terminal asks Prefect for the packs' progress.
POLL_EVERY_S = 1.0

_DESCRIPTION = re.compile(
    r"^pack (?P<label>\S+): step (?P<step>\d+)/(?P<total>\d+)"
    r"(?:, train_nmse (?P<nmse>[0-9.eE+-]+))?$"
)


@dataclass(frozen=True)
class PackStep:
    label: str
    step: int
    total: int
    train_nmse: float | None = None

    def describe(self) -> str:
        text = f"pack {self.label}: step {self.step}/{self.total}"
        return text if self.train_nmse is None else f"{text}, train_nmse {self.train_nmse:.4f}"

    @classmethod
    def parse(cls, description: str | None) -> PackStep | None:
        m = _DESCRIPTION.match(description or "")
        if m is None:
            return None
        nmse = float(m["nmse"]) if m["nmse"] else None
        return cls(m["label"], int(m["step"]), int(m["total"]), nmse)


def total_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """An epoch drops its last partial batch (the trainer's rule)."""
    return epochs * (n_train // batch_size)


class PackReporter:
    """The trainer's ``on_log`` for a pack run as a Prefect task, and :meth:`close` once
    the pack is trained. The artifact moves at most every REPORT_EVERY_S, and at the end
    to the total. Progress is never worth failing training for: a Prefect call that
    fails is logged and training goes on."""

    def __init__(self, label: str, total: int, clock: Callable[[], float] = time.monotonic):
        from prefect.artifacts import create_progress_artifact

        self._label, self._total, self._clock = label, total, clock
        self._latest = PackStep(label, 0, total)
        try:
            self._artifact = create_progress_artifact(0.0, description=self._latest.describe())
        except Exception as exc:
            log.debug("no progress artifact for %s: %s", label, exc)
            self._artifact = None
        self._reported = clock()

    def __call__(self, cell: str, step: int, metrics: dict[str, float]) -> None:
        self._latest = PackStep(self._label, step, self._total, metrics.get("train_nmse"))
        if self._clock() - self._reported >= REPORT_EVERY_S:
            self._report()

    def close(self) -> None:
        """The pack is trained: its last step is the total, whatever was logged last."""
        self._latest = dataclasses.replace(self._latest, step=self._total)
        self._report()

    def _report(self) -> None:
        self._reported = self._clock()
        if self._artifact is None:
            return
        from prefect.artifacts import update_progress_artifact

        now = self._latest
        try:
            update_progress_artifact(
                self._artifact, 100.0 * now.step / max(now.total, 1), description=now.describe()
            )
        except Exception as exc:
            log.debug("progress of %s not recorded: %s", self._label, exc)


class PackWatcher:
    """Polls the flow run's progress artifacts and shows one line per pack, until
    :meth:`stop`. ``read`` returns the artifacts' descriptions (Prefect's client in a
    run; a list in tests)."""

    def __init__(self, read: Callable[[], list[str]], every_s: float = POLL_EVERY_S):
        self._read, self._every_s = read, every_s
        self._lines: dict[str, StageProgress] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pack-progress", daemon=True)

    def start(self) -> PackWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()  # the packs' last steps
        for line in self._lines.values():
            line.close()

    def poll(self) -> None:
        try:
            descriptions = self._read()
        except Exception as exc:  # the terminal's view only: never the run's failure
            log.debug("pack progress unreadable: %s", exc)
            return
        for step in filter(None, map(PackStep.parse, descriptions)):
            if step.label not in self._lines:
                self._lines[step.label] = StageProgress(step.label, step.total, "steps")
            latest = {} if step.train_nmse is None else {"train_nmse": step.train_nmse}
            self._lines[step.label].update(step.step, step.total, **latest)

    def _run(self) -> None:
        while not self._stopped.wait(self._every_s):
            self.poll()


def flow_run_progress(flow_run_id) -> Callable[[], list[str]]:
    """The descriptions of a flow run's progress artifacts, newest state of each."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    artifact_filter = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        type=ArtifactFilterType(any_=["progress"]),
    )

    def read() -> list[str]:
        with get_client(sync_client=True) as client:
            return [
                a.description or "" for a in client.read_artifacts(artifact_filter=artifact_filter)
            ]

    return read
