"""The runs table reads the sweep's MLflow scheme from a real sqlite tracking store."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.store.entities.paged_list import PagedList

from tasks.sweep.compare import cell_rows, latest_sweep_id, runs_table

SWEEP_A = "a1b2c3d4e5f6a7b8-older"
SWEEP_B = "ffee00112233-newer"
SWEEP_C = "c0ffee00c0ffee00"
T0 = 1_700_000_000_000  # ms
#: What the features flow logged on the astro-ph cell (no single-feature probe score).
FEATURES = {
    "label_f1_mean": 0.31,
    "probe_f1_k1_mean": 0.42,
    "probe_f1_k16_mean": 0.6125,
    "dense_probe_f1_mean": 0.7,
}


def _parent(client, experiment_id, domain, sweep_id, start_time):
    tags = {
        "sweep_id": sweep_id,
        "domain": domain,
        "data_snapshot": "snap-1234",
        "embedder": "all-MiniLM-L6-v2",
        "code_version": "abc123",
        "run_kind": "sweep",
    }
    run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name="sweep")
    return run.info.run_id, tags


def _cell(client, experiment_id, parent, k, n, metrics, status="FINISHED", champion=False):
    parent_id, parent_tags = parent
    domain = parent_tags["domain"]
    tags = {
        **parent_tags,
        "run_kind": "cell",
        "mlflow.parentRunId": parent_id,
        "cell": f"{domain.replace('.', '').replace('-', '')}_{k}_{n}_1024",
    }
    if champion:
        tags["champion"] = "true"
    run = client.create_run(experiment_id, tags=tags, run_name=f"k{k}-n{n}")
    run_id = run.info.run_id
    params = {
        "k": k,
        "n_latents": n,
        "batch_size": 1024,
        "lr": 1e-4,
        "epochs": 2,
        "d_in": 384,
        "embedder": parent_tags["embedder"],
        "data_snapshot": parent_tags["data_snapshot"],
        "code_version": parent_tags["code_version"],
    }
    now = int(time.time() * 1000)
    # Per-step curves (named apart from the final metrics) ...
    steps = [
        Metric(key, value, now + step, step)
        for step in (0, 50, 100)
        for key, value in (
            ("train_loss", 1.0 / (step + 1)),
            ("train_nmse", 0.9 / (step + 1)),
            ("train_auxk_loss", 0.0),
            ("train_dead_fraction", 0.99),
            ("lr", 1e-4),
        )
    ]
    # ... then the held-out metrics, logged last at the last step so they are "latest".
    final = [Metric(key, value, now + 1000, 100) for key, value in metrics.items()]
    client.log_batch(
        run_id, metrics=steps + final, params=[Param(k_, str(v)) for k_, v in params.items()]
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def _metrics(nmse, log_fd, act_mean, dead):
    return {
        "nmse": nmse,
        "log_feature_density": log_fd,
        "act_mean": act_mean,
        "dead_fraction": dead,
        "auxk_loss": 0.01,
        "l0": 16.0,
    }


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One sqlite store per module (its first migration takes seconds); tests only read it."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"  # the path is absolute: four slashes
    client = MlflowClient(tracking_uri=uri)

    cs = client.create_experiment("arxiv-sae/cs.LG")
    a = _parent(client, cs, "cs.LG", SWEEP_A, T0)
    b = _parent(client, cs, "cs.LG", SWEEP_B, T0 + 60_000)  # newer
    # Created out of order: the table sorts them.
    _cell(client, cs, a, 32, 9216, _metrics(0.1234567, -2.35364, 0.054512, 0.0125), champion=True)
    _cell(client, cs, a, 16, 6144, _metrics(0.2, -2.9, 0.12, 0.05))
    _cell(client, cs, a, 16, 3072, _metrics(0.2284, -2.7314, 0.1332, 0.0))
    _cell(client, cs, a, 64, 3072, {}, status="FAILED")
    _cell(client, cs, b, 16, 3072, _metrics(0.21, -2.7, 0.13, 0.0), status="RUNNING")
    client.set_terminated(a[0])

    astro = client.create_experiment("arxiv-sae/astro-ph")
    c = _parent(client, astro, "astro-ph", SWEEP_C, T0)
    _cell(client, astro, c, 128, 12288, {**_metrics(0.0936, -2.7025, 0.0399, 0.001), **FEATURES})

    client.create_experiment("arxiv-sae/math.AG")  # exists, but no runs
    other = client.create_experiment("someone-else")  # not ours: never listed
    _cell(client, other, c, 8, 1024, _metrics(0.5, -1.0, 0.2, 0.0))
    return uri, client


def _table_rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_table_for_one_domain(tracking):
    uri, _ = tracking
    table = runs_table(uri, domains=["cs.LG"])
    rows = _table_rows(table)
    assert rows[0] == [
        "domain",
        "sweep",
        "k",
        "n",
        "nmse",
        "log FD",
        "act mean",
        "dead",
        "status",
        "champion",
    ]
    assert set("".join(rows[1])) <= {"-", ":"}  # the markdown rule
    body = rows[2:]
    # Sorted by domain, sweep, k, n; the sweep id cut to 12 characters.
    assert [(r[1], r[2], r[3]) for r in body] == [
        ("a1b2c3d4e5f6", "16", "3072"),
        ("a1b2c3d4e5f6", "16", "6144"),
        ("a1b2c3d4e5f6", "32", "9216"),
        ("a1b2c3d4e5f6", "64", "3072"),
        ("ffee00112233", "16", "3072"),
    ]
    assert {r[0] for r in body} == {"cs.LG"}
    # Final metrics, not the per-step train_dead_fraction; 4 / 3 decimals.
    assert body[2][4:] == ["0.1235", "-2.354", "0.0545", "0.013", "FINISHED", "*"]
    assert body[0][4:8] == ["0.2284", "-2.731", "0.1332", "0.000"]
    # The failed cell logged no held-out metric, only per-step ones.
    assert body[3][4:7] == ["-", "-", "-"] and body[3][8] == "FAILED"
    assert body[3][7] == "-"
    assert body[4][8] == "RUNNING"
    assert [r[9] for r in body] == ["", "", "*", "", ""]
    # Every line has the same width (padded columns).
    assert len({len(line) for line in table.splitlines()}) == 1


def test_client_and_single_domain_string(tracking):
    uri, client = tracking
    assert runs_table(client, domains="cs.LG") == runs_table(uri, domains=["cs.LG"])


def test_sweep_filter(tracking):
    uri, _ = tracking
    body = _table_rows(runs_table(uri, domains=["cs.LG"], sweep_id=SWEEP_B))[2:]
    assert [(r[1], r[2], r[3], r[8]) for r in body] == [("ffee00112233", "16", "3072", "RUNNING")]
    body = _table_rows(runs_table(uri, sweep_id=SWEEP_A))[2:]
    assert len(body) == 4 and {r[1] for r in body} == {"a1b2c3d4e5f6"}


def test_all_domains(tracking):
    uri, _ = tracking
    body = _table_rows(runs_table(uri))[2:]
    assert [r[0] for r in body] == ["astro-ph"] + ["cs.LG"] * 5  # not "someone-else"
    assert body[0][1:5] == ["c0ffee00c0ff", "128", "12288", "0.0936"]


def test_feature_metrics_are_columns_where_a_cell_has_them(tracking):
    uri, _ = tracking
    rows = _table_rows(runs_table(uri, domains="astro-ph"))
    assert rows[0][8:] == [*FEATURES, "status", "champion"]
    assert rows[2][8:12] == ["0.31", "0.42", "0.6125", "0.7"]
    # Beside cells without them: "-" there.
    body = _table_rows(runs_table(uri))[2:]
    assert body[1][8:12] == ["-"] * 4 and body[0][8:12] == rows[2][8:12]


def test_other_metrics(tracking):
    uri, _ = tracking
    rows = _table_rows(runs_table(uri, domains="astro-ph", metrics=("nmse", "l0", "auxk_loss")))
    assert rows[0][4:7] == ["nmse", "L0", "auxk"]
    assert rows[2][4:7] == ["0.0936", "16.00", "0.0100"]


def test_the_metric_names_are_evalmetrics_fields():
    from sae.metrics import METRIC_NAMES
    from tasks.sweep import compare, results

    # A header and a format for each held-out metric, and for nothing else.
    assert set(results.METRIC_COLUMNS) == set(METRIC_NAMES)
    assert set(compare.DEFAULT_METRICS) <= set(METRIC_NAMES)


def test_cell_rows(tracking):
    uri, _ = tracking
    rows = cell_rows(uri, "cs.LG", sweep_id=SWEEP_A)
    assert [(r["k"], r["n_latents"]) for r in rows] == [
        (16, 3072),
        (16, 6144),
        (32, 9216),
        (64, 3072),
    ]
    champion = rows[2]
    assert champion["champion"] and champion["run_name"] == "k32-n9216"
    assert champion["cell"] == "csLG_32_9216_1024" and champion["sweep_id"] == SWEEP_A
    assert champion["nmse"] == pytest.approx(0.1234567)


def test_lookup_errors(tracking):
    uri, _ = tracking
    with pytest.raises(LookupError, match=r"no sweep runs in MLflow at sqlite:.* for math\.AG"):
        runs_table(uri, domains=["math.AG"])  # experiment without runs
    with pytest.raises(LookupError, match=r"for hep-th .*run `sae sweep hep-th` first"):
        runs_table(uri, domains=["hep-th"])  # no such experiment
    with pytest.raises(LookupError, match="of sweep nope"):
        runs_table(uri, domains=["cs.LG"], sweep_id="nope")


def test_lookup_error_without_any_experiment():
    class NoExperiments:
        tracking_uri = "postgresql://sae:secret@db:5432/mlflow"

        def search_experiments(self, **kwargs):
            return PagedList([], None)

    with pytest.raises(LookupError) as info:
        runs_table(NoExperiments())
    message = str(info.value)
    assert "for any domain" in message and "sae sweep <domain>" in message
    assert "secret" not in message and "sae:***@db" in message


def test_latest_sweep_id(tracking):
    uri, client = tracking
    assert latest_sweep_id(client, "cs.LG") == SWEEP_B
    assert latest_sweep_id(uri, "astro-ph") == SWEEP_C
    assert latest_sweep_id(client, "cs_lg") == SWEEP_B  # any spelling of the domain
    assert latest_sweep_id(client, "astroPH") == SWEEP_C
    assert latest_sweep_id(client, "math.AG") is None
    assert latest_sweep_id(client, "hep-th") is None


def test_a_table_without_rows_is_its_header_and_rule():
    from tasks.sweep.results import results_table

    assert results_table([], ("cell", "nmse")).splitlines() == [
        "| cell | nmse |",
        "|------|-----:|",
    ]
