"""Fetch one domain's new papers for a date window from arXiv, within its terms of use.

Two routes, both generators of :class:`RawRecord` for validation to judge:

- :func:`harvest_api`: the search API (Atom). Selects by submission date itself, but serves
  at most 30000 results per query.
- :func:`harvest_oai`: OAI-PMH, the route arXiv recommends for bulk harvesting. It selects
  by datestamp, the last-modification date, so the window also returns revised old papers;
  they are dropped here by their v1 date.

Every request of a harvest goes through one :class:`RateLimiter` (arXiv asks for one
request every 3 s over one connection) and one retry policy, the only retry of a
request to arXiv (its budget: :mod:`infra.retries`). Failures end in a
:class:`HarvestError` naming the URL and the problem, never in a hang: every request has a
timeout and every retry loop a bound.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import httpx

from infra.retries import ARXIV, ARXIV_EMPTY_PAGE_RETRIES
from tasks.corpus.domains import Domain
from tasks.corpus.feeds import FeedError, OaiPage, parse_atom, parse_oai
from tasks.corpus.records import RawRecord
from tasks.corpus.text import parse_date
from tasks.retry_after import retry_after_seconds

log = logging.getLogger("tasks.corpus.harvest")

#: The API serves at most this many results per query, however it is paged.
API_TOTAL_CAP = 30_000
API_PAGE_MAX = 2_000
#: Worth another try: the server is busy, rate-limiting us or briefly broken.
RETRY_STATUSES = frozenset({429, 500, 501, 502, 503, 504})
OAI_FORMATS = ("arXiv", "arXivRaw")
#: arXiv's terms of use: no more than one request every 3 seconds.
ARXIV_MIN_INTERVAL_S = 3.0

Page = TypeVar("Page")


def _default_user_agent() -> str:
    try:
        release = version("arxiv-sae")
    except PackageNotFoundError:
        release = "dev"
    return f"arxiv-sae/{release} (arXiv abstracts corpus harvester; python-httpx)"


@dataclass(frozen=True)
class HarvestConfig:
    """How to reach arXiv and how patiently; checked on creation."""

    api_url: str = "https://export.arxiv.org/api/query"
    """The arXiv API endpoint."""
    oai_url: str = "https://oaipmh.arxiv.org/oai"
    """The OAI-PMH endpoint (``http://export.arxiv.org/oai2`` before March 2025)."""
    min_interval_s: float = 3.0
    """Least time between the starts of two requests (arXiv ToU: one every 3 s)."""
    page_size: int = 200
    """API ``max_results`` per request, at most 2000."""
    max_retries: int = ARXIV.retries
    """Further tries of a request after its first failure (budgets: :mod:`infra.retries`)."""
    backoff_s: float = ARXIV.first_s
    """Wait before retry n (from 0) is ``backoff_s * 2**n``, unless Retry-After says."""
    max_backoff_s: float = ARXIV.max_s
    """Cap on any wait, Retry-After included."""
    timeout_s: float = 60.0
    """Limit on each network operation and on receiving a whole response."""
    oai_format: str = "arXivRaw"
    """OAI ``metadataPrefix``: ``arXivRaw`` (has v1 dates) or ``arXiv`` (has not)."""
    empty_page_retries: int = ARXIV_EMPTY_PAGE_RETRIES
    """Extra tries of an API page that came back empty before ``totalResults`` was reached."""
    user_agent: str = field(default_factory=_default_user_agent)
    """Sent with every request; add a contact address when harvesting in earnest."""

    @classmethod
    def from_settings(cls, settings) -> HarvestConfig:
        """Endpoints and politeness from the ``SAE_HARVEST_*`` settings."""
        return cls(
            api_url=settings.harvest_api_url,
            oai_url=settings.harvest_oai_url,
            min_interval_s=settings.harvest_min_interval_s,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= API_PAGE_MAX:
            raise ValueError(f"page_size must be in 1..{API_PAGE_MAX}, got {self.page_size}")
        if self.oai_format not in OAI_FORMATS:
            raise ValueError(f"oai_format must be one of {OAI_FORMATS}, got {self.oai_format!r}")
        for name in ("min_interval_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0 or self.empty_page_retries < 0:
            raise ValueError("max_retries and empty_page_retries must be >= 0")
        for name in ("api_url", "oai_url"):
            self._check_url(name)

    def _check_url(self, name: str) -> None:
        url = httpx.URL(getattr(self, name))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{name} must be an http(s) URL, got {getattr(self, name)!r}")
        # The terms of use are not ours to relax; only stand-in servers may go faster.
        is_arxiv = url.host == "arxiv.org" or url.host.endswith(".arxiv.org")
        if is_arxiv and self.min_interval_s < ARXIV_MIN_INTERVAL_S:
            raise ValueError(
                f"min_interval_s={self.min_interval_s} is below the"
                f" {ARXIV_MIN_INTERVAL_S} s arXiv's terms of use ask for ({url.host})"
            )


@dataclass
class HarvestStats:
    """Counters updated as a harvest runs; share one between harvests to add them up."""

    requests: int = 0
    """HTTP requests sent, retries included."""
    retries: int = 0
    """Requests repeated after a failure or an unexpectedly empty page."""
    pages: int = 0
    """Responses parsed successfully."""
    records: int = 0
    """Records yielded."""
    skipped_outside_window: int = 0
    """OAI records whose v1 date is outside the window (revisions of older papers)."""
    deleted: int = 0
    """OAI records marked deleted (yielded, for validation to quarantine)."""
    duplicates: int = 0
    """OAI records seen earlier in the same harvest (after a restart)."""
    restarts: int = 0
    """OAI listings started again after an expired resumption token."""
    total_results: int = 0
    """What the API announced for its queries (``opensearch:totalResults``)."""
    missing: int = 0
    """API results announced but never served (the 30000 cap, or pages that stayed empty)."""


class HarvestError(RuntimeError):
    """A harvest could not finish; the message names the URL and what went wrong."""


class RateLimiter:
    """Keeps at least ``min_interval_s`` between the starts of consecutive requests.

    Pass one limiter to consecutive harvests so that the interval holds across them too.
    """

    def __init__(
        self,
        min_interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None

    def wait(self) -> None:
        """Block until the next request may start, and note that it starts now."""
        if self._last is not None:
            delay = self._last + self.min_interval_s - self._clock()
            if delay > 0:
                self._sleep(delay)
        self._last = self._clock()


def display_url(url: str, params: dict[str, str] | None = None) -> str:
    """The request URL as records and messages show it: query included, credentials not."""
    full = httpx.URL(url, params=params)
    return str(full.copy_with(username=None, password=None)) if full.userinfo else str(full)


class _SlowResponseError(Exception):
    pass


class _Fetcher:
    """One GET at a time through the rate limiter, with retries and a parse of the body."""

    def __init__(
        self,
        client: httpx.Client,
        config: HarvestConfig,
        stats: HarvestStats,
        limiter: RateLimiter,
    ) -> None:
        self.client = client
        self.config = config
        self.stats = stats
        self.limiter = limiter

    def get(
        self, url: str, params: dict[str, str], parse: Callable[[bytes, str], Page]
    ) -> tuple[Page, str]:
        """The parsed page and the URL it came from; HarvestError once retries run out."""
        source = display_url(url, params)
        attempts = self.config.max_retries + 1
        last = "no attempt"
        for attempt in range(attempts):
            self.limiter.wait()
            self.stats.requests += 1
            wait_hint = None
            try:
                status, headers, body = self._send(url, params)
            except (httpx.RequestError, _SlowResponseError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    try:
                        page = parse(body, source)
                    except FeedError as exc:  # often a response cut off mid-way
                        last = str(exc).removeprefix(f"{source}: ")
                    else:
                        self.stats.pages += 1
                        return page, source
                elif status in RETRY_STATUSES:
                    last = f"HTTP {status}"
                    wait_hint = retry_after_seconds(headers.get("retry-after"))
                else:
                    raise HarvestError(f"{source}: HTTP {status}: {_snippet(body)}")
            if attempt + 1 < attempts:
                self._back_off(attempt, wait_hint, source, last)
        raise HarvestError(f"{source}: gave up after {attempts} attempts; last failure: {last}")

    def _send(self, url: str, params: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        timeout = self.config.timeout_s
        # httpx times each read, not the whole response: a server trickling bytes would hang.
        deadline = time.monotonic() + timeout
        headers = {"User-Agent": self.config.user_agent}
        with self.client.stream(
            "GET", url, params=params, headers=headers, timeout=timeout
        ) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _SlowResponseError(f"response not complete after {timeout} s")
            return response.status_code, response.headers, b"".join(chunks)

    def _back_off(self, attempt: int, hint: float | None, source: str, last: str) -> None:
        cfg = self.config
        delay = cfg.backoff_s * 2**attempt if hint is None else hint
        delay = min(delay, cfg.max_backoff_s)
        self.stats.retries += 1
        log.warning(
            "%s: %s; retry %d of %d in %.1f s", source, last, attempt + 1, cfg.max_retries, delay
        )
        time.sleep(delay)


def _snippet(body: bytes, limit: int = 300) -> str:
    text = " ".join(body[:limit].decode("utf-8", "replace").split())
    return text or "(empty body)"


@contextmanager
def _fetcher(
    config: HarvestConfig,
    client: httpx.Client | None,
    stats: HarvestStats,
    limiter: RateLimiter | None,
) -> Iterator[_Fetcher]:
    own = client is None
    if client is None:
        client = httpx.Client(
            follow_redirects=True,
            timeout=config.timeout_s,
            limits=httpx.Limits(max_connections=1),  # arXiv ToU: one connection at a time
        )
    try:
        yield _Fetcher(client, config, stats, limiter or RateLimiter(config.min_interval_s))
    finally:
        if own:
            client.close()


def _check_arguments(since: date, until: date, limit: int | None) -> None:
    if since > until:
        raise ValueError(f"empty window: since {since} is after until {until}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _located(record: RawRecord, page_no: int) -> RawRecord:
    return dataclasses.replace(record, location=f"page {page_no} {record.location}")


# --- API ------------------------------------------------------------------------------------


def api_search_query(domain: Domain, since: date, until: date) -> str:
    """The domain's categories AND the submission window, whole days in GMT."""
    return f"{domain.api_query} AND submittedDate:[{since:%Y%m%d}0000 TO {until:%Y%m%d}2359]"


def harvest_api(
    domain: Domain,
    since: date,
    until: date,
    *,
    config: HarvestConfig | None = None,
    stats: HarvestStats | None = None,
    client: httpx.Client | None = None,
    limit: int | None = None,
    limiter: RateLimiter | None = None,
) -> Iterator[RawRecord]:
    """Papers of ``domain`` submitted in [since, until], oldest first, through the arXiv API.

    Records carry the request URL as ``source`` and ``page P entry E`` (1-based) as
    location. An API error entry (a bad query) raises at once. If pages stay empty before
    ``totalResults`` is reached, or the window holds more than the API's 30000, the harvest
    stops with a warning and the shortfall in ``stats.missing``.
    """
    config = config or HarvestConfig()
    _check_arguments(since, until, limit)
    query = api_search_query(domain, since, until)
    return _api_records(query, config, stats or HarvestStats(), client, limit, limiter)


def _api_records(
    query: str,
    config: HarvestConfig,
    stats: HarvestStats,
    client: httpx.Client | None,
    limit: int | None,
    limiter: RateLimiter | None,
) -> Iterator[RawRecord]:
    log.info("API harvest: %s", query)
    start, page_no, yielded, empty_left = 0, 0, 0, config.empty_page_retries
    total: int | None = None
    with _fetcher(config, client, stats, limiter) as fetcher:
        while start < _reachable(total) and not _reached(limit, yielded):
            params = _api_params(query, start, min(config.page_size, API_TOTAL_CAP - start))
            page, source = fetcher.get(config.api_url, params, parse_atom)
            if page.error:
                raise HarvestError(f"{source}: {page.error}")
            if total is None and page.total_results is not None:
                total = _announced(stats, page.total_results, query)
            if not page.records:
                if total is None or empty_left == 0:
                    break
                empty_left -= 1
                stats.retries += 1
                log.warning("%s: empty page before result %d; asking again", source, total)
                continue
            empty_left, page_no = config.empty_page_retries, page_no + 1
            for record in page.records[: None if limit is None else limit - yielded]:
                yielded += 1
                stats.records += 1
                yield _located(record, page_no)
            start += len(page.records)
    if total is not None and not _reached(limit, yielded) and start < total:
        stats.missing += total - start
        log.warning("%s: stopped after %d of %d results", query, start, total)
    log.info("API harvest done: %s", _summary(stats))


def _reachable(total: int | None) -> int:
    return API_TOTAL_CAP if total is None else min(total, API_TOTAL_CAP)


def _api_params(query: str, start: int, size: int) -> dict[str, str]:
    return {
        "search_query": query,
        "sortBy": "submittedDate",
        "sortOrder": "ascending",
        "start": str(start),
        "max_results": str(size),
    }


def _announced(stats: HarvestStats, total: int, query: str) -> int:
    if total > API_TOTAL_CAP:
        log.warning(
            "%s: %d results, but the API serves only %d; use a narrower window or OAI-PMH",
            query,
            total,
            API_TOTAL_CAP,
        )
    stats.total_results += total
    return total


def _reached(limit: int | None, yielded: int) -> bool:
    return limit is not None and yielded >= limit


def _summary(stats: HarvestStats) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(stats).items())


# --- OAI-PMH --------------------------------------------------------------------------------


def harvest_oai(
    domain: Domain,
    since: date,
    until: date,
    *,
    config: HarvestConfig | None = None,
    stats: HarvestStats | None = None,
    client: httpx.Client | None = None,
    limit: int | None = None,
    limiter: RateLimiter | None = None,
) -> Iterator[RawRecord]:
    """Papers of ``domain`` first submitted in [since, until], through OAI-PMH ListRecords.

    Records whose ``published`` date (arXivRaw: the v1 date) lies outside the window are
    revisions of older papers: they are counted in ``stats.skipped_outside_window`` and
    dropped. With ``oai_format="arXiv"`` that date is ``<created>``, which arXiv sometimes
    resets, so that format cannot tell new papers reliably. Deleted records, and records
    without a readable date, are yielded for validation to quarantine with its reason.
    An expired resumption token restarts the listing once; repeats are dropped by id.
    """
    config = config or HarvestConfig()
    _check_arguments(since, until, limit)
    firsts = [
        {
            "verb": "ListRecords",
            "metadataPrefix": config.oai_format,
            **({"set": oai_set} if oai_set else {}),
            "from": since.isoformat(),
            "until": until.isoformat(),
        }
        # No set: the whole repository (all of arXiv).
        for oai_set in domain.oai_sets or ("",)
    ]
    window = (since, until)
    return _oai_records(firsts, window, config, stats or HarvestStats(), client, limit, limiter)


def _oai_records(
    firsts: list[dict[str, str]],
    window: tuple[date, date],
    config: HarvestConfig,
    stats: HarvestStats,
    client: httpx.Client | None,
    limit: int | None,
    limiter: RateLimiter | None,
) -> Iterator[RawRecord]:
    """One listing per set, in turn; a paper in two sets (a cross-list) is yielded once."""
    seen: set[str] = set()
    yielded = 0
    with _fetcher(config, client, stats, limiter) as fetcher:
        for first in firsts:
            if _reached(limit, yielded):
                break
            for record in _oai_listing(fetcher, first, window, config, stats, seen):
                yielded += 1
                yield record
                if _reached(limit, yielded):
                    break
    log.info("OAI-PMH harvest done: %s", _summary(stats))


def _oai_listing(
    fetcher: _Fetcher,
    first: dict[str, str],
    window: tuple[date, date],
    config: HarvestConfig,
    stats: HarvestStats,
    seen: set[str],
) -> Iterator[RawRecord]:
    log.info("OAI-PMH harvest: %s", first)
    params: dict[str, str] | None = first
    page_no, restarts_left = 0, 1
    while params is not None:
        page, source = fetcher.get(config.oai_url, params, parse_oai)
        if page.error_code == "badResumptionToken" and "resumptionToken" in params:
            if restarts_left == 0:
                raise HarvestError(f"{source}: {page.error}, again after a restart")
            restarts_left -= 1
            stats.restarts += 1
            log.warning("%s: %s; restarting the listing", source, page.error)
            params, page_no = first, 0
            continue
        if page.error:
            raise HarvestError(f"{source}: {page.error}")
        page_no += 1
        for record in page.records:
            if _keep_oai(record, window, stats, seen):
                stats.records += 1
                yield _located(record, page_no)
        params = _next_oai_params(page, params, source)


def _next_oai_params(page: OaiPage, params: dict[str, str], source: str) -> dict[str, str] | None:
    """The request for the next page (the token alone, as OAI-PMH demands), or None when done."""
    token = page.resumption_token
    if token is None:
        return None
    if token == params.get("resumptionToken"):  # would loop forever
        raise HarvestError(f"{source}: the server handed back the same resumption token")
    return {"verb": "ListRecords", "resumptionToken": token}


def _keep_oai(
    record: RawRecord, window: tuple[date, date], stats: HarvestStats, seen: set[str]
) -> bool:
    fields: dict[str, Any] = record.fields or {}
    record_id = fields.get("id")
    if record_id:
        if record_id in seen:
            stats.duplicates += 1
            return False
        seen.add(record_id)
    if fields.get("deleted"):
        stats.deleted += 1
        return True
    day = published_date(fields.get("published"))
    if day is not None and not window[0] <= day <= window[1]:
        stats.skipped_outside_window += 1
        return False
    return True


def published_date(value: Any) -> date | None:
    """The UTC day of a ``published`` field, or None when it has none that parses."""
    try:
        return parse_date(value)
    except ValueError:
        return None
