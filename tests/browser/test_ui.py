"""The MLflow and Prefect UIs in a real browser, after a small sweep run as a user runs it.

`sae sweep --features` without `sae up` (its own Prefect server, the sqlite MLflow store),
then `sae up`, then the pages a user opens: the experiment's runs, a cell's
metric charts, the sweep's plots, the champion model, the champion's feature browser
page as MLflow shows it, and the sweep's flow run with its task runs and artifacts in
the Prefect UI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local_stack import stack_status
from infra.settings import Settings
from tasks.search.limits import MAX_STRENGTH
from tests.browser.browser import WAIT_MS, browser, chromium, screenshot_dir, server_errors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SAE = str(Path(sys.executable).with_name("sae"))
#: Asked for by MLflow's UI on every page, answered 404 by a server without auth.
MLFLOW_HARMLESS = ("/ajax-api/2.0/mlflow/users/current",)
#: Prefect 3.8's UI asks for an icon it has no name for.
PREFECT_HARMLESS = ("/ico/undefined.svg",)
#: The UI's switch between its GenAI and model-training views, given with every link.
TRAINING = "workflowType=machine_learning"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAE_", "PREFECT_API"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "SAE_HOME": str(home)}


def _sae(home: Path, *args: str, timeout: float) -> str:
    done = subprocess.run(
        [SAE, *args], env=_env(home), capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return output


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cs_lg_head):
    """A 1 x 2 sweep run without `sae up`, then `sae up`; the stack's URLs and the run."""
    chromium()  # skip (or fail in CI) before minutes of training
    home = tmp_path_factory.mktemp("ui") / "sae_home"
    sweep = ["sweep", "cs.LG", "--source", str(cs_lg_head), "--limit", "100"]
    sweep += ["--k", "4,8", "--n", "64", "--epochs", "8", "--batch-size", "8", "--lr", "3e-3"]
    output = _sae(home, *sweep, "--features", timeout=3000)  # and their features
    assert "live features" in output and "browser.html" in output, output[-5000:]
    link = re.search(r"`sae up`, then open http://127\.0\.0\.1:\d+/runs/flow-run/(\S{36})", output)
    assert link, output[-5000:]
    _sae(home, "up", timeout=900)
    try:
        status = stack_status(Settings(home=home))
        experiment = re.search(r"arxiv-sae/cs\.LG  (\S+)", _sae(home, "ui", timeout=300))
        assert experiment
        yield {
            "home": home,
            "mlflow": status["mlflow"]["ui"],
            "prefect": status["prefect"]["ui"],
            "flow_run": link.group(1),
            "experiment": experiment.group(1),  # the link `sae ui` prints
        }
    finally:
        _sae(home, "down", timeout=300)


def test_mlflow_ui_shows_runs_charts_plots_and_the_champion(swept):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(swept["mlflow"])
    exp = client.get_experiment_by_name("arxiv-sae/cs.LG")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = next(r for r in runs.values() if r.data.tags["run_kind"] == "sweep")
    (champion,) = [m for m in client.search_registered_models() if "champion" in m.aliases]
    base = f"{swept['mlflow']}/#/experiments/{exp.experiment_id}"
    shots = screenshot_dir("mlflow")

    with browser(shots, MLFLOW_HARMLESS) as ui:
        ui.open(swept["experiment"]).expect(parent.info.run_name, "TopK sparse autoencoders")
        assert "/runs" in ui.page.url  # the training view, not GenAI's overview or traces
        ui.check("1-runs")

        cell = runs["k8-n64"].info.run_id
        ui.open(f"{base}/runs/{cell}/model-metrics?{TRAINING}")
        # The page draws the charts that scroll into view only; a user finds the curves by
        # name, as here (there are more charts than fit: importance_*, prefix_* ...).
        ui.page.get_by_placeholder("Search metric charts").fill("nmse")
        ui.expect("k8-n64 (nmse)", "train_nmse", "k8-n64 (train_nmse)").check("2-cell-metrics")

        ui.open(f"{base}/runs/{parent.info.run_id}?{TRAINING}")
        ui.expect("Held-out metrics per cell", "sae-cs.LG-k8-n64/1").check("3-sweep-overview")

        ui.open(f"{base}/runs/{parent.info.run_id}/artifacts/plots/nmse_vs_k.png?{TRAINING}")
        ui.expect("plots/nmse_vs_k.png").wait_for(
            # The viewer shows the file it fetched as a blob: the plot, 1000+ px wide.
            "() => [...document.images].some("
            "i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 1000)"
        ).check("4-sweep-plot")

        ui.open(f"{swept['mlflow']}/#/models/{champion.name}?{TRAINING}")
        ui.expect(champion.name, "champion").check("5-champion-model")

    assert not server_errors(swept["home"] / "logs" / "mlflow.log", MLFLOW_HARMLESS)


def test_prefect_ui_shows_the_sweep_run_without_sae_up(swept):
    import httpx

    api = f"{swept['prefect']}/api"
    query = {
        "flow_runs": {"parent_task_run_id": {"is_null_": False}},
        "flows": {"name": {"any_": ["train-packs"]}},  # not the features subflow
    }
    (packs,) = httpx.post(f"{api}/flow_runs/filter", json=query, trust_env=False).json()
    shots = screenshot_dir("prefect")

    with browser(shots, PREFECT_HARMLESS) as ui:
        ui.open(f"{swept['prefect']}/runs/flow-run/{swept['flow_run']}")
        ui.expect("sweep", "Completed").check("1-sweep-flow-run")
        ui.click("Task Runs").expect("log-k4-n64", "log-k8-n64").check("2-sweep-task-runs")
        ui.click("Artifacts").expect("results of sweep").check("3-sweep-artifacts")

        ui.open(f"{swept['prefect']}/runs/flow-run/{packs['id']}")
        ui.click("Task Runs").expect("train-k").check("4-packs-task-runs")
        ui.click("Artifacts").expect("cells done / total").check("5-packs-progress")


def test_the_feature_page_works_inside_mlflows_artifact_viewer(swept):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(swept["mlflow"])
    exp = client.get_experiment_by_name("arxiv-sae/cs.LG")
    (parent,) = client.search_runs([exp.experiment_id], "tags.run_kind = 'sweep'")
    champion = next(
        r.data.tags["cell"]
        for r in client.search_runs([exp.experiment_id], "tags.champion = 'true'")
    )
    sweep_id = parent.data.tags["sweep_id"]
    doc = json.loads(
        (swept["home"] / "store" / "sae" / sweep_id / champion / "features" / "features.json")
        .read_text()
    )  # fmt: skip
    live = [f for f in doc["features"] if f["density"]]
    # A term of the densest feature's label, and the rows the search must leave (<= 200 shown).
    term = max((f for f in live if f["label"]), key=lambda f: f["density"])["label"][0]
    want = sum(any(term in t.lower() for t in f["label"]) for f in live)

    page = f"features/{champion}.html"
    url = f"{swept['mlflow']}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    rows = "document.querySelectorAll('#features tbody tr').length"
    shots = screenshot_dir("mlflow-features")
    with browser(shots, MLFLOW_HARMLESS) as ui:
        ui.open(f"{url}/artifacts/{page}?{TRAINING}").expect(page)
        viewer = ui.page.frame_locator("iframe").first
        viewer.locator("#features tbody tr").first.wait_for()
        frame = next(f for f in ui.page.frames if f.query_selector("#features"))
        assert frame.evaluate(rows) == min(len(live), 200)
        viewer.locator("#search").fill(term)
        frame.wait_for_function(f"() => {rows} === {min(want, 200)}", polling=100)
        viewer.locator("#features tbody tr").first.click()
        viewer.locator("#card").get_by_text("Top papers").wait_for()
        ui.check("1-feature-page-in-mlflow")
    assert not server_errors(swept["home"] / "logs" / "mlflow.log", MLFLOW_HARMLESS)


def test_the_search_page_follows_a_slider_and_says_what_is_wrong(swept):
    """`sae serve` on the sweep: a query's results are the API's, raising one of its
    features reorders them as the API says, and bad input shows the server's message."""
    import httpx

    from infra.local_stack import free_port

    port = free_port()
    log_path = swept["home"] / "logs" / "serve.log"
    query = "graph neural networks for molecules"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [SAE, "serve", "--port", str(port)], env=_env(swept["home"]), stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(server, f"{url}api/models", log_path)
        models = httpx.get(f"{url}api/models", trust_env=False).json()["domains"]["cs.LG"]

        def api(strengths: dict) -> list[str]:
            body = {"query": query, "domain": "cs.LG", "sweep": models["sweep"]}
            answer = httpx.post(  # the first loads the model and the embedder: slow
                f"{url}api/search",
                json={**body, "strengths": strengths},
                trust_env=False,
                timeout=WAIT_MS / 1000,
            )
            assert answer.status_code == 200, answer.text
            return answer.json()

        plain = api({})
        # One of the query's own features that, raised to the maximum, changes the order.
        raised, order = next(
            (f["id"], ids)
            for f in plain["features"]
            if (ids := [h["id"] for h in api({f["id"]: MAX_STRENGTH})["hits"]])
            != [h["id"] for h in plain["hits"]]
        )
        shown = "() => [...document.querySelectorAll('#results li')].map(li => li.dataset.id)"
        with browser(screenshot_dir("search")) as ui:
            ui.open(url)
            ui.page.fill("#query", query)
            ui.page.click("#go")
            ui.page.locator("#results li").first.wait_for()
            assert ui.page.evaluate(shown) == [h["id"] for h in plain["hits"]]
            assert ui.page.locator("#features li").count() == len(plain["features"])
            ui.check("1-query")

            ui.page.locator(f'#features li[data-id="{raised}"] input').fill(f"{MAX_STRENGTH:g}")
            same = f"() => JSON.stringify(({shown})()) === JSON.stringify({json.dumps(order)})"
            ui.wait_for(same)
            assert "steered by 1 feature" in ui.page.inner_text("#status")
            ui.check("2-raised")

            # A card link opens the feature's card in the feature browser.
            href = ui.page.locator(f'#features li[data-id="{raised}"] a.fid').get_attribute("href")
            card = httpx.get(url + href.split("#")[0], trust_env=False, timeout=WAIT_MS / 1000)
            assert card.status_code == 200 and "features-data" in card.text

            # A feature the query lacks, added by id, comes in with its label.
            own = {f["id"] for f in plain["features"]}
            added = next(i for i in range(64) if i not in own)
            label = next(f for f in api({added: 3})["features"] if f["id"] == added)["label"]
            ui.page.fill("#add-id", str(added))
            ui.page.click("#add")
            row = ui.page.locator(f'#features li[data-id="{added}"] .label')
            ui.wait_for(
                f"() => document.querySelector('#features li[data-id=\"{added}\"] .label')"
                f"?.textContent === {json.dumps(', '.join(label[:3]) or '(no label yet)')}"
            )
            assert row.count() == 1

            ui.page.fill("#add-id", "9999")
            ui.page.click("#add")
            ui.expect("feature 9999 does not exist in")
            assert ui.page.locator('#features li[data-id="9999"]').count() == 0
            ui.page.fill("#query", "")
            ui.page.click("#go")
            ui.expect("the query is empty")
            ui.page.screenshot(path=str(ui.shots / "3-bad-input.png"))
            assert ui.page.locator("#results li").count() == 0
            # The two refusals, and nothing else, answered 4xx.
            assert [p.split(" ", 2)[:2] for p in ui.problems] == [["400", "POST"]] * 2
    finally:
        server.terminate()
        server.wait(timeout=60)
    served = log_path.read_text()
    assert "Traceback" not in served and query not in served, served[-3000:]
    assert re.search(r'"POST /api/search HTTP/1.1" 400', served)


def _wait_for_server(server: subprocess.Popen, url: str, log_path: Path) -> None:
    """Until ``url`` answers; fails at once if the server exits (polling on its events, not
    on a deadline: pytest's timeout is the ceiling)."""
    import time

    import httpx

    while True:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(url, trust_env=False, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
