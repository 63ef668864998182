"""What the MLflow UI shows of an experiment and a sweep's parent run, on a real sqlite store."""

from __future__ import annotations

from infra.settings import get_settings
from infra.tracking import ensure_experiment, mlflow_client
from tasks.sweep.track import log_summary


def test_an_experiment_is_a_described_training_experiment_and_a_parent_shows_its_table():
    settings = get_settings()
    client = mlflow_client(settings)

    first = ensure_experiment(client, settings, "cs.LG", "cs_lg", "st-old-model")
    again = ensure_experiment(client, settings, "cs.LG", "cs_lg", "all-MiniLM-L6-v2")
    assert again == first
    tags = client.get_experiment(first).tags
    # MLflow's own value for a model-training (not GenAI) experiment.
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    note = tags["mlflow.note.content"]
    assert "cs.LG" in note and "all-MiniLM-L6-v2" in note and "st-old-model" not in note
    assert "sae-cs.LG-k{k}-n{n}" in note and "champion" in note

    parent = client.create_run(first).info.run_id
    table = "| k | n | nmse |\n|---:|---:|---:|\n| 16 | 3072 | 0.6553 |"
    log_summary(client, parent, table, [{"nmse": 0.6553}], plots=[])
    description = client.get_run(parent).data.tags["mlflow.note.content"]
    assert description.endswith(table) and "champion" in description
