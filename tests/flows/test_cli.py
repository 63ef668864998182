"""The `sae` command line, run in-process through Typer's runner."""

import subprocess
import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows import cli
from flows.cli import app
from sae import TopKSAE, TrainConfig
from tasks.sweep.config import MatrixParams, SweepParams

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output and "train" in result.output


def test_info_reports_versions_device_backend_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAE_KERNELS", "torch")
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "torch" in out and "triton" in out
    assert "kernels" in out and "forced by SAE_KERNELS=torch" in out
    assert str(tmp_path / "home" / "store") in out


def test_train_on_a_file_writes_loadable_checkpoints_and_resumes(tmp_path, monkeypatch, make_data):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "home"))
    path = tmp_path / "emb.npy"
    np.save(path, make_data(600, 32).numpy())
    args = ["train", "--data", str(path), "--k", "4", "--n", "64,96", "--epochs", "2"]
    args += ["--batch-size", "128", "--run-id", "demo", "--domain", "cs.LG"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "csLG_4_96_128" in first.output
    cell = tmp_path / "home" / "store" / "sae" / "demo" / "csLG_4_64_128"
    model = TopKSAE.load(cell)
    assert (model.k, model.n_latents, model.d_in) == (4, 64, 32)
    # The dead window by default: one epoch (600 rows less 5% held out), recorded as used.
    assert model.cfg.dead_threshold_samples == 570
    again = runner.invoke(app, [a.replace("cs.LG", "cs_lg") for a in args])  # one domain
    assert again.exit_code == 0
    assert "step" not in again.output, "finished cells are not retrained"
    # A setting of the SAE itself, given on the command line, reaches every cell's cfg.json.
    args = [*(a.replace("demo", "window") for a in args), "--dead-threshold-samples", "256"]
    assert runner.invoke(app, args).exit_code == 0
    assert TopKSAE.load(cell.parent.parent / "window" / "csLG_4_96_128").cfg.dead_threshold == 256


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "100", "--n", "64"], "larger than n_latents"),
        (["--k", "0", "--n", "64"], "k must be positive"),
        (["--data", "missing.npy"], "no such file"),
    ],
)
def test_train_rejects_bad_input_with_a_named_error(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--limit", "100", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(("command", "model"), [("sweep", SweepParams), ("train", MatrixParams)])
def test_the_options_are_the_parameter_model(command, model):
    """One declaration: every field is an option (or the argument) with the model's default
    and help, and nothing else is."""
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    assert set(params) == set(model.model_fields)
    for name, field in model.model_fields.items():
        default = params[name].default
        if isinstance(field.default, list):
            assert default == ",".join(map(str, field.default)), name
        else:
            assert getattr(default, "value", default) == field.default, name
        assert field.description and field.description in (params[name].help or ""), name
    assert "--n" in params["n_latents"].opts


def test_the_sweep_command_builds_the_flow_parameters(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_sweep", lambda params: seen.append(params) or [])
    args = ["sweep", "cs_lg,astroPH", "--k", "32,16", "--n", "3072", "--lr", "3e-4"]
    args += ["--lr-schedule", "cosine", "--compute-dtype", "bfloat16", "--limit", "500"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    want = SweepParams(
        domains=["cs.LG", "astro-ph"], k=[16, 32], n_latents=[3072], lr=3e-4,
        lr_schedule="cosine", compute_dtype="bfloat16", limit=500,
    )  # fmt: skip
    assert seen == [want]
    assert want.train_config().compute_dtype == "bfloat16"
    assert SweepParams().train_config() == TrainConfig()  # the library's defaults


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "16,x"], "--k takes comma-separated integers"),
        (["--lr", "0"], "--lr: lr must be positive"),
        (["--lr-schedule", "linear"], "'linear' is not one of"),
        (["--batch-size", "-1"], "--batch-size: batch_size must be a positive integer"),
        (["nope.XY"], "DOMAIN: unknown domain"),
    ],
)
def test_bad_sweep_options_are_named(args, message, monkeypatch):
    monkeypatch.setattr(cli, "_run_sweep", lambda params: pytest.fail("must not run"))
    result = runner.invoke(app, ["sweep", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_the_command_line_starts_without_torch_prefect_ray_or_mlflow():
    """`sae --help`, `sae ingest` and the options built from the parameter models must not
    pay for the heavy imports (3-12 s on 2 cores); the commands import what they use."""
    code = (
        "import sys, flows.cli; "
        "print(sorted(m for m in ('torch', 'prefect', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_reembed_options_are_its_parameter_model():
    from tasks.reembed import ReembedParams

    params = {p.name: p for p in typer.main.get_command(app).commands["reembed"].params}
    assert set(params) == set(ReembedParams.model_fields)
    assert params["domains"].required and "--wait" in params["wait_s"].opts


def test_reembed_takes_several_domains_as_one_harvest_and_old_deployments_still_parse():
    from tasks.reembed import ReembedParams

    several = ReembedParams(domains=["stat.ML", "cs_lg", "cs.LG+cs.CV"])
    assert several.domains == ["stat.ML", "cs.LG", "cs.CV+cs.LG"]
    assert several.domain == "cs.CV+cs.LG+stat.ML"
    assert ReembedParams(domains=["all", "gr-qc"]).domain == "all"
    # A deployment made before domains became a list.
    assert ReembedParams(domain="astro_ph").domains == ["astro-ph"]


def test_train_names_an_unreadable_matrix_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"not a numpy file")
    result = runner.invoke(app, ["train", "--data", str(bad), "--k", "4", "--n", "64"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "unexpected" not in result.output


def test_the_arch_settings_are_sweep_options(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_sweep", lambda params: seen.append(params) or [])
    args = ["sweep", "cs_lg", "--k", "4", "--n", "64", "--arch", "matryoshka"]
    result = runner.invoke(app, [*args, "--prefixes", "16,64"])
    assert result.exit_code == 0, result.output
    assert seen[0].prefixes == [16, 64]
    assert seen[0].sae_options()["arch"] == "matryoshka"
    result = runner.invoke(app, [*args, "--n", "32,64", "--prefixes", "16,64"])
    assert result.exit_code == 2
    assert "the last prefix must be n_latents=32" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["features", "cs.LG"], "no sweep of cs.LG is recorded in MLflow; run `sae sweep"),
        (["features", "nope.XY"], "DOMAIN: unknown domain"),
        (["features", "cs.LG", "--cells", "a b"], "not a cell name"),
        (["features", "cs.LG", "--llm-labels", "5"], "set SAE_LABEL_API_BASE"),
        (["feature", "cs.LG", "3"], "no sweep of cs.LG is recorded"),
        (["feature", "nope", "3"], "neither a domain nor a cell name"),
    ],
)
def test_features_refuse_what_is_missing_before_any_server_starts(
    args, message, tmp_path, monkeypatch
):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SAE_LABEL_API_BASE", raising=False)
    monkeypatch.setattr(
        "flows.features_cli.prefect_for_run", lambda *a, **k: pytest.fail("must not start")
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
