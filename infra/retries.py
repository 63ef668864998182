"""Every retry of the project: one layer per boundary, and what each may cost.

A failure is retried once, by the layer nearest to it; the layers above never retry it
again, so waits add up instead of multiplying. Prefect tasks have no retries: what
reaches one has already been retried below, or is a failure a retry cannot fix, and
every flow resumes where it stopped when run again.

| boundary                | the one layer       | tries | waits (s)                   | worst wait |
|-------------------------|---------------------|-------|-----------------------------|------------|
| arXiv API, OAI-PMH      | the harvester       | 1 + 5 | 2, 4, 8, 16, 32             | 62 s       |
| arXiv, by quickstart    | the harvester       | 1 + 2 | 2, 4                        | 6 s        |
| an API page empty early | the harvester       | 1 + 2 | the rate limit's 3          | 6 s        |
| embeddings API          | its client          | 1 + 6 | 1, 2, 4, 8, 16, 32 x jitter | 63 s       |
| chat API (LLM labels)   | its client          | 1 + 6 | 1, 2, 4, 8, 16, 32 x jitter | 63 s       |
| S3 store                | ``Store``           | 1 + 5 | 0.5, 1, 2, 4, 8             | 15.5 s     |
| local-folder store      | none                | 1     |                             | 0          |
| a Ray worker dying      | Ray ``max_retries`` | 1 + 2 | none: rescheduled at once   | 0          |
| MLflow, Prefect servers | their own clients   | -     | see their settings          | -          |

- The harvester (``tasks.corpus.harvest``) retries connection errors, timeouts, 429, 5xx
  and a page cut off mid-way; a ``Retry-After`` wins over its own wait, capped at 120 s
  (so 600 s at most if arXiv asks); ``sae quickstart`` gives up sooner, so that a user
  offline hears so in seconds. The harvester also asks again, up to twice, for an API page that
  came back empty before the announced total.
- The embeddings client (``tasks.embed.openai_api``) retries connection errors, timeouts,
  408, 429 and 5xx; each wait is times a jitter in [0.5, 1]; ``Retry-After`` /
  ``retry-after-ms`` win, capped at 60 s (360 s at most if the server asks).
- The chat client of LLM labels (``tasks.features.llm_labels``) retries the same way (both
  go through ``tasks.openai_http``). A malformed answer is asked for once more, a content
  retry, not a transport one.
- ``infra.store.Store`` retries any S3 error but a missing object, refused access or
  missing credentials, the whole call (a response cut off mid-body included); botocore's
  and s3fs's own loops are switched off so that this is the only one. The exclusive
  create of a lease is never retried: a retry could find its own first write and report
  a lost race.
- MLflow's and Prefect's clients retry their own servers (``MLFLOW_HTTP_REQUEST_*``,
  ``PREFECT_CLIENT_*``); nothing here adds to that.
- Ray retries an embedding shard or a training pack whose worker died (killed, out of
  memory, node lost); the pack resumes from its cells' checkpoints. An exception raised
  by the task is not retried (Ray's default).

The worst waits leave out the requests themselves (each bounded by its timeout) and, for
arXiv, the rate limit's 3 s between requests. ``tests/infra/test_retries.py`` checks this
table against the policies below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``retries`` further tries after a failure, waiting ``first_s * 2**n`` before try n
    (from 0), at most ``max_s``."""

    retries: int
    first_s: float
    max_s: float

    def delay(self, n: int) -> float:
        return min(self.first_s * 2**n, self.max_s)

    def delays(self) -> tuple[float, ...]:
        return tuple(self.delay(n) for n in range(self.retries))

    @property
    def worst_wait_s(self) -> float:
        """Total wait when every try fails and no server asks for longer."""
        return sum(self.delays())


#: Requests to arXiv (defaults of ``HarvestConfig``).
ARXIV = Backoff(retries=5, first_s=2.0, max_s=120.0)
#: Requests to arXiv from ``sae quickstart``: offline, the user should hear so in seconds.
ARXIV_QUICKSTART = Backoff(retries=2, first_s=ARXIV.first_s, max_s=ARXIV.max_s)
#: Extra tries of an arXiv API page that came back empty before its announced total.
ARXIV_EMPTY_PAGE_RETRIES = 2
#: Requests to an OpenAI-compatible embeddings endpoint (defaults of its client).
EMBEDDINGS_API = Backoff(retries=6, first_s=1.0, max_s=60.0)
#: Requests to an OpenAI-compatible chat endpoint for LLM feature labels.
CHAT_API = Backoff(retries=6, first_s=1.0, max_s=60.0)
#: Calls to an S3 store: a restart or a few seconds of dropped connections cost a pause.
STORE = Backoff(retries=5, first_s=0.5, max_s=8.0)
#: Ray ``max_retries`` of an embedding shard and of a training pack: a worker that dies
#: is replaced, an exception raised by the task is not retried (Ray's default).
WORKER_RETRIES = 2
