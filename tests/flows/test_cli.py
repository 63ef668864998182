"""The `sae` command line, run in-process through Typer's runner."""

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from sae import TopKSAE

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
    again = runner.invoke(app, [a.replace("cs.LG", "cs_lg") for a in args])  # one domain
    assert again.exit_code == 0
    assert "step" not in again.output, "finished cells are not retrained"


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
