"""The paper-table script runs end to end on toy data (its heavy step runs on a lent GPU
machine, rarely), and both implementations are judged by the library's NMSE."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from sae.config import SAEConfig
from sae.metrics import evaluate
from sae.model import TopKSAE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "scripts/paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_trains_the_grid_the_papers_step_and_reports(paper_table, tmp_path, capsys):
    assert paper_table.main(["train", "--dry-run", "--out", str(tmp_path), "--grid-s", "1"]) == 0
    res = json.loads((tmp_path / "paper_table.json").read_text())
    grid = res["domains"]["cs_lg"]
    assert set(grid["cells"]) == {"4x32", "4x48", "8x32", "8x48"}
    assert grid["steps"] == grid["epochs"] * (600 // 600)
    for cell in grid["cells"].values():
        assert cell["steps"] == grid["steps"]
        assert cell["dead_window"] == 600  # one epoch: fewer rows than 266 batches
        assert cell["curve"] and all(math.isfinite(p[2]) for p in cell["curve"])
        assert cell["curve"][-1][0] <= grid["steps"]
    parity = res["parity"]["4x32"]
    assert parity["ours"] == grid["cells"]["4x32"]["metrics"]["nmse"]
    assert parity["paper_code"]["steps"] == grid["steps"]
    assert 0 < parity["paper_code"]["nmse"] < 2
    capsys.readouterr()
    for k, n in paper_table.TABLE_CELLS:  # the cells the paper's table shows
        res["domains"]["cs_lg"]["cells"][f"{k}x{n}"] = {**grid["cells"]["4x32"], "k": k, "n": n}
    (tmp_path / "full.json").write_text(json.dumps(res))
    paper_table.main(
        ["report", "--results", str(tmp_path / "full.json"), "--figures", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert "| cs.LG | 64 | 9216 |" in printed and "parity 4x32" in printed
    assert (tmp_path / "frontier.png").stat().st_size > 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_one_nmse_formula_for_both_implementations(paper_table):
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    model = TopKSAE(SAEConfig(d_in=8, n_latents=32, k=4))
    ours = paper_table.heldout_nmse(lambda rows: model(rows).x_hat, x)
    assert ours == pytest.approx(evaluate(model, x).metrics.nmse, rel=1e-5)


def test_the_papers_step_keeps_its_decoder_columns_at_unit_norm(paper_table):
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = paper_table.PaperSAE(x, n=32, k=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = paper_table.heldout_nmse(model.reconstruct, x)
    for _ in range(30):
        model.step(x, opt)
    torch.testing.assert_close(model.W_dec.norm(dim=0), torch.ones(32))
    assert paper_table.heldout_nmse(model.reconstruct, x) < before
