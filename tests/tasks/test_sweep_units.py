"""The sweep's pure parts: parameters, identity, champion rule, pack resources."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.ray_runtime import PACK_MAX_RETRIES, pack_resources
from infra.tracking import experiment_name
from sae.config import cell_name, parse_cell_name
from tasks.corpus.domains import get_domain
from tasks.sweep.config import PAPER_K, PAPER_N, SweepParams, sweep_id
from tasks.sweep.track import choose_champion, model_name, run_name
from tasks.sweep.train import CellRef


def test_defaults_are_the_papers_grid():
    p = SweepParams()
    assert (p.k, p.n_latents, p.epochs, p.lr, p.batch_size) == (PAPER_K, PAPER_N, 50, 1e-4, 1024)
    assert len(p.cells()) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domains": ["hep_thh"]}, "unknown domain 'hep_thh': did you mean hep-th"),
        ({"domains": ["cs.ML"]}, "did you mean cs.LG or stat.ML"),
        ({"domains": ["cs.LG+cs_lg"]}, "cs.LG appears twice"),
        ({"domains": ["astro-ph.GA+astro-ph"]}, "astro-ph.GA is already in astro-ph"),
        ({"k": [64], "n_latents": [32]}, "k=64 is larger than n_latents=32"),
        ({"k": [0]}, "positive"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"domains": ["cs.LG", "cs.LG"]}, "repeat"),
        ({"domains": ["cs.LG", "cs_lg"]}, "repeat"),
        ({"kk": [1]}, "Extra inputs"),
    ],
)
def test_bad_parameters_name_the_problem(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SweepParams(**kwargs)


def test_grid_values_are_sorted_and_unique():
    assert SweepParams(k=[32, 16, 32], n_latents=[4608, 3072]).cells() == [
        (16, 3072),
        (16, 4608),
        (32, 3072),
        (32, 4608),
    ]


def test_sweep_id_follows_training_data_and_code_but_not_the_grid():
    base = SweepParams(k=[16], n_latents=[3072])
    sid = sweep_id(base, "cs_lg", "snap-a", "1.0+gabc")
    assert sid.startswith("cs_lg-") and sid == sweep_id(base, "cs_lg", "snap-a", "1.0+gabc")
    grown = SweepParams(k=[16, 32], n_latents=[3072, 4608])
    assert sweep_id(grown, "cs_lg", "snap-a", "1.0+gabc") == sid  # new cells join the sweep
    assert sweep_id(base, "cs_lg", "snap-b", "1.0+gabc") != sid
    assert sweep_id(base, "cs_lg", "snap-a", "1.0+gdef") != sid
    assert sweep_id(SweepParams(k=[16], n_latents=[3072], lr=1e-3), "cs_lg", "snap-a", "x") != (
        sweep_id(base, "cs_lg", "snap-a", "x")
    )
    window = SweepParams(k=[16], n_latents=[3072], dead_threshold_samples=4096)
    assert window.sae_options() == {
        "dead_threshold_samples": 4096, "arch": "topk", "prefixes": None,
        "matryoshka_selection": "topk", "threshold_decay": 0.99,
    }  # fmt: skip
    matryoshka = SweepParams(k=[16], n_latents=[3072], arch="matryoshka")
    assert matryoshka.mlflow_params()["arch"] == "matryoshka"
    assert sweep_id(matryoshka, "cs_lg", "snap-a", "x") != sweep_id(base, "cs_lg", "snap-a", "x")
    assert window.mlflow_params()["dead_threshold_samples"] == "4096"
    assert sweep_id(window, "cs_lg", "snap-a", "x") != sweep_id(base, "cs_lg", "snap-a", "x")


@pytest.mark.parametrize(
    ("spellings", "name", "cell", "slug"),
    [
        (["cs.LG", "cs_lg", "csLG", "CS.lg", "cs-lg", " CSLG "], "cs.LG", "csLG", "cs_lg"),
        (
            ["astro-ph", "astro_ph", "astroPH", "Astro-Ph", "astro.ph"],
            "astro-ph",
            "astroPH",
            "astro_ph",
        ),
        (["gr-qc", "gr_qc", "grqc", "GR-QC"], "gr-qc", "grqc", "gr_qc"),
        (
            ["cond-mat.str-el", "cond_mat_str_el", "condmatSTREL"],
            "cond-mat.str-el",
            "condmatstrel",
            "cond_mat_str_el",
        ),
        (["math", "MATH"], "math", "math", "math"),
        (["all", "ALL", "All"], "all", "all", "all"),
        (
            ["cs.LG+stat.ML", "stat.ML+cs.LG", "statML+csLG", "cs_lg+stat_ml"],
            "cs.LG+stat.ML",
            "csLG+statML",
            "cs_lg+stat_ml",
        ),
    ],
)
def test_every_spelling_of_a_domain_is_one_experiment_one_set_of_models_cells_and_folders(
    spellings, name, cell, slug
):
    # The released checkpoints' naming: csLG_{k}_{n}_{batch}, astroPH_{k}_{n}_{batch}.
    named = set()
    for spelling in spellings:
        params = SweepParams(domains=[spelling], k=[16], n_latents=[3072])
        (domain,) = params.domains
        dom = get_domain(spelling)
        named.add(
            (
                domain,
                experiment_name(domain),
                model_name(domain, 16, 3072),
                cell_name(domain, 16, 3072, params.batch_size),
                dom.slug,
                sweep_id(params, dom.slug, "snap-a", "v1"),
            )
        )
    ((domain, experiment, model, cell_dir, folder, _),) = named
    assert (domain, experiment, model) == (name, f"arxiv-sae/{name}", f"sae-{name}-k16-n3072")
    assert (cell_dir, folder) == (f"{cell}_16_3072_1024", slug)
    assert parse_cell_name(cell_dir) == (cell, 16, 3072, 1024)
    assert get_domain(cell).name == name  # a cell's name leads back to its domain


def _ref(k, n, nmse, dead):
    return CellRef(
        cell=f"csLG_{k}_{n}_1024",
        k=k,
        n_latents=n,
        d_in=384,
        folder="x",
        metrics={"nmse": nmse, "dead_fraction": dead},
        steps=1,
        seconds=1.0,
    )


def test_champion_is_the_lowest_nmse_among_cells_with_few_dead_latents():
    cells = [_ref(128, 12288, 0.10, 0.30), _ref(64, 9216, 0.15, 0.01), _ref(32, 9216, 0.2, 0.0)]
    assert choose_champion(cells, max_dead=0.05).cell == "csLG_64_9216_1024"
    # No cell qualifies: the lowest NMSE overall.
    assert choose_champion(cells, max_dead=0.0001).cell == "csLG_32_9216_1024"
    assert choose_champion(cells[:1], max_dead=0.05).cell == "csLG_128_12288_1024"
    # Ties: the smaller k, then the smaller n.
    tie = [_ref(64, 6144, 0.1, 0.0), _ref(32, 9216, 0.1, 0.0), _ref(32, 6144, 0.1, 0.0)]
    assert choose_champion(tie, max_dead=0.05).cell == "csLG_32_6144_1024"
    with pytest.raises(ValueError):
        choose_champion([], max_dead=0.05)


def test_names_used_in_mlflow():
    assert model_name("cs.LG", 32, 9216) == "sae-cs.LG-k32-n9216"
    assert run_name(32, 9216) == "k32-n9216"


def test_pack_resources_fill_the_gpus_or_take_a_node():
    opts, packs = pack_resources({"CPU": 32.0, "GPU": 8.0}, 1.0, None)
    assert (opts["num_gpus"], packs, opts["max_retries"]) == (1.0, 8, PACK_MAX_RETRIES)
    opts, packs = pack_resources({"CPU": 32.0, "GPU": 2.0}, 0.5, None)
    assert (opts["num_gpus"], packs) == (0.5, 4)
    opts, packs = pack_resources({"CPU": 32.0, "GPU": 1.0}, 2.0, 3)
    assert (opts["num_gpus"], packs) == (1.0, 3)  # never more than the cluster has


def test_a_finished_sweep_is_recognised_by_code_settings_and_cells(tmp_path):
    """What decides whether `sae sweep` starts Ray while its Prefect server boots."""
    from mlflow import MlflowClient

    from tasks.sweep.track import SweepContext, close_parent, finished_before, open_parent

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = SweepParams(k=[16], n_latents=[3072], epochs=3)
    assert not finished_before(client, params, "v1")  # no experiment yet
    experiment = client.create_experiment("arxiv-sae/cs.LG")
    ctx = SweepContext(
        sweep_id="cs_lg-x", domain="cs.LG", experiment_id=experiment, data_snapshot="snap",
        embedder="minilm", code_version="v1", train_params=params.mlflow_params(),
    )  # fmt: skip
    parent = open_parent(client, ctx, {"k": [16, 32], "n_latents": [3072]})
    assert not finished_before(client, params, "v1")  # still running
    close_parent(client, parent, ok=True)
    assert finished_before(client, params, "v1")
    assert finished_before(client, SweepParams(k=[32, 16], n_latents=[3072], epochs=3), "v1")
    assert not finished_before(client, params, "v2")  # other code
    assert not finished_before(client, SweepParams(k=[16], n_latents=[3072], epochs=4), "v1")
    assert not finished_before(client, SweepParams(k=[64], n_latents=[3072], epochs=3), "v1")
    both = SweepParams(domains=["cs.LG", "astro-ph"], k=[16], n_latents=[3072], epochs=3)
    assert not finished_before(client, both, "v1")  # astro-ph has none
