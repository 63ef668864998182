"""Where each cell of a sweep was trained: per attempt of its pack, the Ray node and the
first step that attempt logged.

A pack whose node is lost runs again elsewhere (Ray's ``max_retries``) and resumes from
its cells' checkpoints: its cells then show two attempts, the second on another node and
starting past step 0. Kept beside the cell's checkpoint (``placement.json``) while it
trains, and set as tags of the cell's MLflow run when it is logged.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import asdict, dataclass

from infra.store import Store
from sae.trainer import LogFn

log = logging.getLogger(__name__)

PLACEMENT_FILE = "placement.json"


@dataclass(frozen=True)
class Attempt:
    node_id: str  # Ray's node id ("" outside Ray)
    host: str
    first_step: int  # the first step this attempt logged: past 0 when it resumed
    device: str = ""  # what trained: "cuda (NVIDIA H100 80GB HBM3)", "cpu (2 threads)"


def this_node() -> tuple[str, str]:
    """(Ray node id, host name) of this process."""
    import ray  # see infra.ray_runtime.ensure_ray: seconds of import

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return node, socket.gethostname()


def read_placement(store: Store, cell_folder: str) -> list[Attempt]:
    try:
        rows = store.read_json(f"{cell_folder}/{PLACEMENT_FILE}")
    except FileNotFoundError:
        return []
    return [Attempt(**row) for row in rows]


def placement_tags(attempts: list[Attempt]) -> dict[str, str]:
    """MLflow tags: the node, host and device that finished the cell, and every attempt."""
    if not attempts:
        return {}
    last = attempts[-1]
    return {
        "ray_node_id": last.node_id,
        "host": last.host,
        "device": last.device,
        "train_attempts": json.dumps([asdict(a) for a in attempts]),
    }


class PlacementRecorder:
    """A trainer's ``on_log`` that notes, at each cell's first logged step of this
    attempt, the attempt in the cell's ``placement.json``; then calls ``on_log``.

    The attempts of a pack run one after the other, so each file has one writer at a time.
    """

    def __init__(self, store: Store, folder: str, on_log: LogFn, device: str = "") -> None:
        self._store, self._folder, self._on_log = store, folder, on_log
        self._device = device
        self._node, self._host = this_node()
        self._seen: set[str] = set()

    def __call__(self, cell: str, step: int, metrics: dict[str, float]) -> None:
        if cell not in self._seen:
            self._note(cell, step)
        self._on_log(cell, step, metrics)

    def finish(self, trained: dict[str, int]) -> None:
        """Notes the cells this attempt trained that never logged a step (a run shorter
        than ``log_every_steps``, or logging off), at their last step: ``trained`` maps
        each to it."""
        for cell, step in trained.items():
            if cell not in self._seen:
                self._note(cell, step)

    def _note(self, cell: str, step: int) -> None:
        self._seen.add(cell)
        folder = f"{self._folder}/{cell}"
        attempts = [*read_placement(self._store, folder),
                    Attempt(self._node, self._host, step, self._device)]  # fmt: skip
        log.info("%s: attempt %d on %s (Ray node %s) from step %d", cell, len(attempts),
                 self._host, self._node[:8] or "-", step)  # fmt: skip
        self._store.write_json(f"{folder}/{PLACEMENT_FILE}", [asdict(a) for a in attempts])
