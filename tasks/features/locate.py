"""Which sweep and which cells to read, found in MLflow as the sweep flow recorded them
(:mod:`tasks.sweep.track`): a parent run per sweep, a complete child run per cell, both
tagged ``sweep_id``; the cell's files are in the store under ``sae/{sweep_id}/{cell}``."""

from __future__ import annotations

from dataclasses import dataclass

from infra.tracking import experiment_name
from tasks.features.params import DEFAULT_CELLS
from tasks.sweep.track import CHAMPION


class FeaturesInputError(ValueError):
    """Nothing to analyse: no such domain experiment, sweep or cell."""


def require_label_api(settings) -> None:
    """LLM labels need a chat API: refused, naming the settings, when none is set."""
    if not settings.label_api_base:
        raise FeaturesInputError(
            "--llm-labels needs an OpenAI-compatible chat API: set SAE_LABEL_API_BASE "
            "(and SAE_LABEL_MODEL; the key in SAE_LABEL_API_KEY or OPENAI_API_KEY)"
        )


@dataclass(frozen=True)
class CellInfo:
    cell: str
    k: int
    n_latents: int
    run_id: str
    champion: bool
    n_axis: bool

    def folder(self, sweep_id: str) -> str:
        return f"sae/{sweep_id}/{self.cell}"


@dataclass(frozen=True)
class SweepInfo:
    domain: str
    sweep_id: str
    parent_run_id: str
    experiment_id: str
    data_snapshot: str
    embedder: str
    start_time: int
    cells: tuple[CellInfo, ...]

    @property
    def champion(self) -> CellInfo | None:
        return next((c for c in self.cells if c.champion), None)

    def cell(self, name: str) -> CellInfo:
        for c in self.cells:
            if c.cell.lower() == name.lower():
                return c
        known = ", ".join(c.cell for c in self.cells)
        raise FeaturesInputError(f"sweep {self.sweep_id} has no cell {name!r}; it has {known}")


#: An SAE brought in by ``sae import-sae`` is recorded as a sweep with this code version
#: and an id with this prefix: it is searched and analysed when named, but never stands
#: in for the domain's own newest sweep (nor its champion's predecessor).
IMPORTED = "imported"
IMPORT_PREFIX = "import-"


def find_sweep(client, domain: str, sweep_id: str | None = None) -> SweepInfo:
    """The sweep ``sweep_id`` of ``domain``, or the domain's newest finished one trained
    here (imports only by their id)."""
    experiment = client.get_experiment_by_name(experiment_name(domain))
    if experiment is None:
        raise FeaturesInputError(
            f"no sweep of {domain} is recorded in MLflow; run `sae sweep {domain}` first"
        )
    query = "tags.run_kind = 'sweep'"
    if sweep_id:
        query += f" and tags.sweep_id = '{sweep_id}'"
    else:
        query += f" and attributes.status = 'FINISHED' and tags.code_version != '{IMPORTED}'"
    runs = client.search_runs(
        [experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        what = f"sweep {sweep_id}" if sweep_id else "finished sweep"
        raise FeaturesInputError(
            f"no {what} of {domain} is recorded in MLflow; `sae runs --domain {domain}` lists "
            "the sweeps"
        )
    return _sweep_info(client, experiment.experiment_id, runs[0])


def previous_sweep(client, current: SweepInfo) -> SweepInfo | None:
    """The newest finished sweep of the domain that started before ``current``, on another
    data snapshot with the same embedder (the champion a re-embed and a new sweep replace)."""
    query = (
        "tags.run_kind = 'sweep' and attributes.status = 'FINISHED' "
        f"and tags.code_version != '{IMPORTED}' and tags.embedder = '{current.embedder}' "
        f"and attributes.start_time < {current.start_time}"
    )
    for run in client.search_runs(
        [current.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=20
    ):
        if run.data.tags.get("data_snapshot") != current.data_snapshot:
            info = _sweep_info(client, current.experiment_id, run)
            if info.champion is not None:
                return info
    return None


def choose_cells(info: SweepInfo, wanted: list[str]) -> list[CellInfo]:
    """``default``: the champion and, per k, the largest n; ``champion``; ``all``; names."""
    grid = [c for c in info.cells if not c.n_axis]
    chosen: list[CellInfo] = []
    for name in wanted:
        if name in (DEFAULT_CELLS, CHAMPION):
            if info.champion is not None:
                chosen.append(info.champion)
            if name == DEFAULT_CELLS:
                for k in sorted({c.k for c in grid}):
                    chosen.append(max((c for c in grid if c.k == k), key=lambda c: c.n_latents))
        elif name == "all":
            chosen.extend(info.cells)
        else:
            chosen.append(info.cell(name))
    unique = {c.cell: c for c in chosen}
    if not unique:
        raise FeaturesInputError(f"sweep {info.sweep_id} of {info.domain} has no finished cells")
    return sorted(unique.values(), key=lambda c: (c.k, c.n_latents, c.n_axis))


def _sweep_info(client, experiment_id: str, parent) -> SweepInfo:
    tags = parent.data.tags
    sid = tags["sweep_id"]
    query = f"tags.sweep_id = '{sid}' and tags.run_kind = 'cell' and tags.complete = 'true'"
    cells = []
    for run in client.search_runs([experiment_id], query, max_results=1000):
        t, p = run.data.tags, run.data.params
        cells.append(
            CellInfo(
                cell=t["cell"],
                k=int(p["k"]),
                n_latents=int(p["n_latents"]),
                run_id=run.info.run_id,
                champion=t.get(CHAMPION) == "true",
                n_axis=run.info.run_name.endswith("-matryoshka"),
            )
        )
    return SweepInfo(
        domain=tags["domain"],
        sweep_id=sid,
        parent_run_id=parent.info.run_id,
        experiment_id=experiment_id,
        data_snapshot=tags["data_snapshot"],
        embedder=tags["embedder"],
        start_time=int(parent.info.start_time),
        cells=tuple(sorted(cells, key=lambda c: (c.k, c.n_latents, c.n_axis))),
    )
