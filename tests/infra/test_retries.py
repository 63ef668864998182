"""The retry table of ``infra.retries`` says what the code does: one layer per boundary."""

import re

import pytest

from infra import retries
from infra.retries import (
    ARXIV,
    ARXIV_QUICKSTART,
    CHAT_API,
    EMBEDDINGS_API,
    STORE,
    WORKER_RETRIES,
    Backoff,
)


def _row(boundary: str) -> list[str]:
    line = next(x for x in retries.__doc__.splitlines() if x.startswith(f"| {boundary} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.parametrize(
    ("boundary", "policy", "worst_s"),
    [("arXiv API, OAI-PMH", ARXIV, 62), ("arXiv, by quickstart", ARXIV_QUICKSTART, 6),
     ("embeddings API", EMBEDDINGS_API, 63), ("chat API (LLM labels)", CHAT_API, 63),
     ("S3 store", STORE, 15.5)],
)  # fmt: skip
def test_the_table_states_each_policy(boundary, policy, worst_s):
    _, _, tries, waits, worst = _row(boundary)
    assert tries == f"1 + {policy.retries}"
    assert re.findall(r"[\d.]+", waits) == [f"{d:g}" for d in policy.delays()]
    assert policy.worst_wait_s == worst_s and worst == f"{worst_s:g} s"


def test_the_table_states_the_worker_retries():
    assert _row("a Ray worker dying")[2] == f"1 + {WORKER_RETRIES}"


def test_backoff_doubles_up_to_its_cap():
    assert Backoff(retries=4, first_s=1.0, max_s=5.0).delays() == (1.0, 2.0, 4.0, 5.0)
    assert Backoff(retries=0, first_s=1.0, max_s=5.0).worst_wait_s == 0


def test_each_layer_takes_its_budget_from_the_table(monkeypatch):
    from infra.ray_runtime import PACK_MAX_RETRIES
    from tasks.corpus.harvest import HarvestConfig
    from tasks.embed.openai_api import OpenAIEmbedder

    config = HarvestConfig()
    assert (config.max_retries, config.backoff_s, config.max_backoff_s) == (
        ARXIV.retries,
        ARXIV.first_s,
        ARXIV.max_s,
    )
    assert config.empty_page_retries == retries.ARXIV_EMPTY_PAGE_RETRIES
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    client = OpenAIEmbedder("m", api_base="http://127.0.0.1:9/v1")
    assert (client.http.max_retries, client.http.backoff_s, client.http.max_backoff_s) == (
        EMBEDDINGS_API.retries,
        EMBEDDINGS_API.first_s,
        EMBEDDINGS_API.max_s,
    )
    assert PACK_MAX_RETRIES == WORKER_RETRIES


def test_no_prefect_task_retries_what_a_layer_below_already_did():
    from tasks.reembed import steps as reembed_steps
    from tasks.sweep import steps as sweep_steps

    tasks = [
        step
        for module in (sweep_steps, reembed_steps)
        for step in vars(module).values()
        if hasattr(step, "retry_condition_fn") and hasattr(step, "fn")
    ]
    assert len(tasks) >= 7
    for step in tasks:
        assert not step.retries, step.name
