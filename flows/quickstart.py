"""`make run`: the quickstart sweep, on the shared arXiv sample or, without one, on a recent
window of cs.LG papers fetched from the arXiv API.

    python -m flows.quickstart [ARXIV_DATA]      # ARXIV_DATA: the folder of cs_lg.jsonl.gz

The data step (:func:`prepare`) is separate from the sweep so that it can be tested alone.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.cli_common import setup_logging
from infra.retries import ARXIV_QUICKSTART
from infra.settings import get_settings
from infra.store import StoreError
from tasks.corpus.domains import get_domain
from tasks.corpus.harvest import HarvestConfig, HarvestError
from tasks.corpus.ingest import harvest
from tasks.corpus.storage import read_watermark
from tasks.layout import open_store

DOMAIN = "cs.LG"
SAMPLE = "cs_lg.jsonl.gz"
DEFAULT_ARXIV_DATA = Path("../shared/data/arxiv")
#: A week of cs.LG, cross-lists included, holds a few thousand papers: enough for the
#: sweep's 2,000 without a second week of requests.
WINDOW_DAYS = 7
MAX_PAPERS = 2000
# k = 32 and 64: on 1,900 training papers k = 16 left 15% of n = 4,608's latents unfired
# for a whole epoch (dead by the paper's rule, AuxK or not); 32 and 64 leave at most 2%.
# --features: what a researcher comes for, the cells' labelled features, in the same run.
GRID = (
    "--limit", "2000", "--k", "32,64", "--n", "3072,4608",
    "--epochs", "10", "--batch-size", "256", "--lr", "1e-3", "--features",
)  # fmt: skip


class QuickstartError(Exception):
    """No data to train on; the message says what to do."""


def sweep_argv(sample: Path | None) -> list[str]:
    """The sweep `make run` runs: on the sample file, or on the corpus already filled."""
    source = ["--source", str(sample)] if sample is not None else []
    return ["sae", "sweep", DOMAIN, *source, *GRID]


def prepare(arxiv_data: Path) -> Path | None:
    """The sample file if ``arxiv_data`` holds it; otherwise fills the corpus from arXiv
    (unless an earlier quickstart did) and returns None."""
    sample = arxiv_data / SAMPLE
    if sample.is_file():
        return sample
    try:
        _harvest_unless_done(sample)
    except HarvestError as exc:
        raise QuickstartError(
            f"no arXiv sample at {sample} and arXiv could not be reached: set"
            f" ARXIV_DATA=/path/to/arxiv (the folder holding {SAMPLE}) or connect to the"
            " internet, then rerun `make run`"
        ) from exc
    except (StoreError, ValueError) as exc:  # a store or setting to fix; the message names it
        raise QuickstartError(str(exc)) from exc
    return None


def _harvest_unless_done(sample: Path) -> None:
    settings = get_settings()
    store = open_store(settings)
    domain = get_domain(DOMAIN)
    # The watermark is written only once a harvest has finished: a rerun trains on the
    # same papers (and retrains nothing), and an interrupted harvest is done again.
    mark = read_watermark(store, domain)
    if mark is not None:
        print(
            f"no arXiv sample at {sample}; using the {DOMAIN} papers harvested up to {mark.newest}"
        )
        return
    until = datetime.now(UTC).date()
    since = until - timedelta(days=WINDOW_DAYS)
    print(
        f"no arXiv sample at {sample}; fetching up to {MAX_PAPERS} {DOMAIN} papers submitted"
        f" {since}..{until} from arXiv (one request every {settings.harvest_min_interval_s:g} s)"
    )
    config = dataclasses.replace(
        HarvestConfig.from_settings(settings), max_retries=ARXIV_QUICKSTART.retries
    )
    report = harvest(
        store, domain, since=since, until=until, source="api", config=config, limit=MAX_PAPERS
    )
    print(report.summary())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    setup_logging()
    try:
        sample = prepare(Path(args[0]) if args else DEFAULT_ARXIV_DATA)
    except QuickstartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    command = sweep_argv(sample)
    print("$ " + " ".join(command), flush=True)
    # `sae` itself, run by this interpreter: no need for the venv's bin/ on PATH.
    os.execv(sys.executable, [sys.executable, "-m", "flows.cli", *command[1:]])


if __name__ == "__main__":
    main()
