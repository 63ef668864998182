"""`sae export` and `sae import-sae` end to end, on a tiny real sweep (Prefect server,
local Ray, MLflow sqlite, the shared sample): an export loads as SAELens reads it (through
sae-lens itself when installed) with our outputs, its import back searches exactly as
the original cell and is analysed like a sweep's, and bad input is refused in one line
with nothing left behind."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flows.cli import app
from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.search.limits import MAX_STRENGTH
from tests.flows.sweeps import embedded_cs_lg, ray_reporting_to

CS = get_domain("cs.LG")
SAMPLE = 160
GRID = dict(k=[4], n_latents=[32], epochs=1, batch_size=32, lr=1e-3)
QUERY = "graph neural networks for molecules"
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_for_module(prefect_api):
    with ray_reporting_to(prefect_api):
        yield


@pytest.fixture(scope="module")
def embedded_template(tmp_path_factory, arxiv_data, ray_for_module):
    """A store with SAMPLE cs.LG papers ingested and embedded once for the module."""
    return embedded_cs_lg(tmp_path_factory.mktemp("interop_template"), arxiv_data, SAMPLE)


@pytest.fixture
def swept(embedded_template, prefect_env):
    """A finished 1-cell sweep of cs.LG in this test's home."""
    from flows.sweep import sweep
    from tasks.sweep.config import SweepParams

    shutil.copytree(embedded_template, get_settings().store)
    (result,) = sweep(SweepParams(domains=["cs.LG"], **GRID))
    assert not result.failed and result.champion == "csLG_4_32_32"
    return result


def cli(*args: str, code: int = 0) -> str:
    out = runner.invoke(app, list(args))
    assert out.exit_code == code, out.output
    return out.output


def refused(*args: str, says: str) -> None:
    output = cli(*args, code=2)
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], output


def imports(store: Store) -> list[str]:
    return store.list("sae", "import-*/*/*")


def import_runs(client) -> list:
    exp = client.get_experiment_by_name("arxiv-sae/cs.LG")
    return client.search_runs([exp.experiment_id], "tags.code_version = 'imported'")


def test_bad_input_is_refused_before_any_lookup(tmp_path):
    """No sweep, no store: what the arguments alone show is refused in one line."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    refused("export", "cs.LG", "--to", str(full), says=f"{full} is not empty; --force")
    refused("export", "cs.LG", "--to", str(full / "x"), says="exists and is not a folder")

    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "cfg.json").write_text(
        json.dumps({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2})
    )
    save_file(
        {"W_enc": torch.zeros(16, 8), "b_enc": torch.zeros(16), "W_dec": torch.zeros(16, 8),
         "b_dec": torch.zeros(8)},
        str(folder / "sae_weights.safetensors"),
    )  # fmt: skip
    refused("import-sae", str(folder), "--domain", "cs.LG", says="W_enc has shape [16, 8]")
    refused("import-sae", str(tmp_path / "none"), "--domain", "cs.LG", says="is not a folder")
    assert not Store.from_settings(get_settings()).exists("sae")


@pytest.mark.slow
def test_export_import_round_trip_searches_like_the_original(swept, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from sae.model import TopKSAE
    from tasks.embed.manifest import Namespace
    from tasks.embed.snapshot import snapshot_by_id
    from tasks.interop.saelens import read_saelens
    from tasks.search.load import open_engine, sweep_models

    settings = get_settings()
    store = Store.from_settings(settings)
    client = MlflowClient(settings.tracking_uri)
    cell, original = swept.champion, swept.sweep_id
    stored = TopKSAE.load(f"{settings.store}/sae/{original}/{cell}")

    # Export: bad input refused, nothing written.
    out = tmp_path / "exported"
    refused("export", "csLG_4_99_32", "--to", str(out), says="has no cell 'csLG_4_99_32'")
    refused("export", "nonsense", "--to", str(out), says="neither a domain nor a cell name")
    refused("export", cell, "--to", str(out), "--format", "onnx", says="--format must be one of")
    refused("export", cell, "--to", str(out), "--sweep", "abc", says="no sweep abc of cs.LG")
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused("export", cell, "--to", str(out), says="is not empty; --force replaces")
    assert (out / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # The domain's champion, as SAELens reads it; the card says what it is.
    said = cli("export", "cs.LG", "--to", str(out), "--force")
    assert f"{cell} of sweep {original}" in said
    names = ["README.md", "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == names
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelens\n") and "| nmse |" in card
    assert "| batch_size | 32 |" in card and f"sweep `{original}`" in card
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg["metadata"]["arxiv_sae"]["embedder"] == "minilm-l6-v2"
    back, _ = read_saelens(out)
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        assert torch.equal(getattr(back, name), getattr(stored, name)), name

    snap = snapshot_by_id(store, CS, "minilm-l6-v2", swept.data_snapshot)
    _, x = Namespace(store, "minilm-l6-v2").load(keys=store.read_parquet(snap.path))
    x = torch.from_numpy(np.array(x, dtype=np.float32))  # a writable copy
    values, indices = stored.encode(x)
    if importlib.util.find_spec("sae_lens") is not None:
        from sae_lens import SAE

        theirs = SAE.load_from_disk(str(out))
        with torch.no_grad():
            acts = theirs.encode(x)
            x_hat = theirs.decode(acts)
        want = torch.zeros_like(acts).scatter_(1, indices, values)
        torch.testing.assert_close(acts, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_hat, stored.decode(values, indices), atol=1e-5, rtol=1e-5)

    ours = tmp_path / "ours"
    cli("export", cell, "--to", str(ours), "--format", "safetensors")
    assert sorted(p.name for p in ours.iterdir()) == ["README.md", "cfg.json", "model.safetensors"]
    assert torch.equal(TopKSAE.load(ours).W_dec, stored.W_dec)

    # Import: bad input refused before anything is written.
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    (theirs_dir / "cfg.json").write_text(
        json.dumps({"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4})
    )
    gen = torch.Generator().manual_seed(0)
    save_file(
        {
            "W_enc": torch.randn(16, 32, generator=gen),
            "b_enc": torch.zeros(32),
            "W_dec": torch.randn(32, 16, generator=gen),
            "b_dec": torch.zeros(16),
        },
        str(theirs_dir / "sae_weights.safetensors"),
    )
    refused(
        "import-sae",
        str(theirs_dir),
        "--domain",
        "cs.LG",
        says="d_in is 16, but 'minilm' gives 384",
    )
    refused("import-sae", str(out), "--domain", "cs.LG", "--embedder", "bogus:x", says="bogus:x")
    refused(
        "import-sae",
        str(out),
        "--domain",
        "cs.LG",
        "--embedder",
        "openai:text-embedding-3-small",
        says="exported from minilm-l6-v2 embeddings",
    )
    # (a cs.LG paper or two may be cross-listed there: too few to measure the SAE on)
    astro = get_domain("astro-ph")
    refused(
        "import-sae",
        str(out),
        "--domain",
        astro.name,
        says="run `sae embed astro-ph --embedder minilm`",
    )
    assert store.list(Namespace(store, "minilm-l6-v2").snapshot_dir(astro.slug), "*") == []
    refused("import-sae", str(out), "--domain", "cs.ML", says="unknown domain 'cs.ML'")
    refused("import-sae", str(ours), "--domain", "cs.LG", says="it has no sae_weights")
    (theirs_dir / "cfg.json").write_text(
        json.dumps({"architecture": "jumprelu", "d_in": 16, "d_sae": 32})
    )
    refused("import-sae", str(theirs_dir), "--domain", "cs.LG", says="'jumprelu' SAE; only TopK")

    # A failure half-way (here: after MLflow recorded it) takes back what it wrote.
    import tasks.interop.import_sae as import_module

    real = import_module.record_import

    def then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("the tracking server went away")

    with monkeypatch.context() as patch:
        patch.setattr(import_module, "record_import", then_fail)
        cli("import-sae", str(out), "--domain", "cs.LG", code=1)
    assert imports(store) == [] and import_runs(client) == []

    # The import: a one-cell sweep with the original's metrics, found by its id; the
    # domain's own sweep stays the one search and features take by default.
    said = cli("import-sae", str(out), "--domain", "cs.LG")
    sid = said.split(" of sweep ")[1].split()[0]
    assert sid.startswith("import-") and f"imported as {cell} of sweep {sid}" in said
    assert f"snapshot {swept.data_snapshot}" in said
    assert "already imported" in cli("import-sae", str(out), "--domain", "cs.LG")
    runs = {r.data.tags["run_kind"]: r for r in import_runs(client)}
    assert sorted(runs) == ["cell", "sweep"] and len(import_runs(client)) == 2
    parent, child = runs["sweep"], runs["cell"]
    assert parent.info.status == child.info.status == "FINISHED"
    assert parent.data.tags["imported_from"] == str(out.resolve())
    assert child.data.tags["champion"] == child.data.tags["complete"] == "true"
    assert child.data.tags["data_snapshot"] == swept.data_snapshot
    assert (child.data.params["k"], child.data.params["n_latents"]) == ("4", "32")
    original_run = client.get_run(
        next(r for r in client.search_runs(
            [parent.info.experiment_id], f"tags.sweep_id = '{original}' and tags.run_kind = 'cell'"
        )).info.run_id
    )  # fmt: skip
    for name in ("nmse", "act_mean", "l0", "retrieval_recall_at_10"):
        assert child.data.metrics[name] == pytest.approx(original_run.data.metrics[name], rel=1e-4)
    assert sweep_models("cs.LG", settings)["sweep"] == original

    # It searches as the original cell does, edited or not.
    engines = [open_engine("cs.LG", cell, s, settings) for s in (original, sid)]
    absent = next(
        i for i in range(32) if i not in {f.id for f in engines[0].search(QUERY).features}
    )
    for strengths in ({}, {absent: MAX_STRENGTH}):
        a, b = (e.search(QUERY, strengths, 8) for e in engines)
        assert [h.id for h in a.hits] == [h.id for h in b.hits] and len(a.hits) == 8
        assert [f.id for f in a.features] == [f.id for f in b.features]
        assert [f.strength for f in a.features] == pytest.approx([f.strength for f in b.features])
    found = json.loads(runner.invoke(app, ["search", QUERY, "--json"]).stdout)
    assert found["cell"] == cell

    # It is analysed as a sweep's cells are, and exports again, as imported.
    from flows.features import features
    from tasks.features.params import FeaturesParams

    (report,) = features(FeaturesParams(domains=["cs.LG"], sweep=sid, cells=["all"]))
    assert set(report.cells) == {cell} and report.cells[cell]["live_features"] > 0
    again = tmp_path / "again"
    cli("export", cell, "--sweep", sid, "--to", str(again))
    assert "not trained here" in (again / "README.md").read_text()
    assert torch.equal(read_saelens(again)[0].W_enc, stored.W_enc)
    assert f"already imported as {cell} of sweep {sid}" in cli(
        "import-sae", str(again), "--domain", "cs.LG"
    )
