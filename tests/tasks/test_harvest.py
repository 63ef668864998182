"""Harvesting against the local stand-in server: paging, politeness, retries and failures."""

from __future__ import annotations

import itertools
import logging
import time
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from tasks.corpus.domains import get_domain
from tasks.corpus.harvest import (
    HarvestConfig,
    HarvestError,
    HarvestStats,
    RateLimiter,
    display_url,
    harvest_api,
    harvest_oai,
    published_date,
    retry_after_seconds,
)
from tests.tasks.arxiv_server import (
    MALFORMED,
    ArxivServer,
    Paper,
    Reply,
    atom_error,
    atom_feed,
    oai_deleted,
    oai_error,
    unused_url,
)

CS_LG = get_domain("cs.LG")
SINCE, UNTIL = date(2026, 1, 5), date(2026, 1, 6)
# The limiter spaces request starts in the client; the server sees arrivals, which a busy
# machine delays unevenly by some milliseconds. Without a limiter the gaps are ~1 ms.
JITTER_S = 0.05


def _papers(n: int, day: date = SINCE) -> list[Paper]:
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return [
        Paper(f"2601.{i:05d}", title=f"Paper {i}", submitted=noon + timedelta(minutes=i))
        for i in range(n)
    ]


def _config(server: ArxivServer, **overrides) -> HarvestConfig:
    settings = {
        "api_url": server.api_url,
        "oai_url": server.oai_url,
        "min_interval_s": 0.05,
        "page_size": 3,
        "max_retries": 2,
        "backoff_s": 0.01,
        "max_backoff_s": 2.0,
        "timeout_s": 5.0,
    }
    return HarvestConfig(**(settings | overrides))


def _ids(records) -> list[str]:
    return [r.fields["id"] for r in records]


def _gaps(requests) -> list[float]:
    return [b.time - a.time for a, b in itertools.pairwise(requests)]


@pytest.fixture
def server():
    with ArxivServer() as running:
        yield running


def _is_resumption(request) -> bool:
    return "resumptionToken" in request.query


# --- API: paging and the query --------------------------------------------------------------


def test_api_pages_through_all_results(server, caplog):
    server.api_entries = _papers(8)
    stats = HarvestStats()
    with caplog.at_level(logging.INFO, logger="tasks.corpus.harvest"):
        records = list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))

    assert [r.fields["id"] for r in records] == [
        f"http://arxiv.org/abs/2601.{i:05d}v1" for i in range(8)
    ]
    assert [r.query["start"] for r in server.requests] == ["0", "3", "6"]
    assert {r.query["max_results"] for r in server.requests} == {"3"}
    assert records[3].location == "page 2 entry 1"
    assert "start=3" in records[3].source and records[3].source.startswith(server.api_url)
    assert (stats.requests, stats.pages, stats.records, stats.retries) == (3, 3, 8, 0)
    assert (stats.total_results, stats.missing) == (8, 0)
    assert "records=8" in caplog.text


def test_api_query_names_the_category_and_the_window(server):
    server.api_entries = _papers(1)
    list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server)))
    (request,) = server.requests
    assert request.query["search_query"] == (
        "cat:cs.LG AND submittedDate:[202601050000 TO 202601062359]"
    )
    assert (request.query["sortBy"], request.query["sortOrder"]) == ("submittedDate", "ascending")
    assert request.headers["User-Agent"].startswith("arxiv-sae/")


def test_astro_query_lists_every_astro_category(server):
    list(harvest_api(get_domain("astro-ph"), SINCE, SINCE, config=_config(server)))
    query = server.requests[0].query["search_query"]
    assert "cat:astro-ph.GA" in query and "cat:astro-ph.SR" in query
    assert query.endswith("submittedDate:[202601050000 TO 202601052359]")


def test_limit_stops_early(server):
    server.api_entries = _papers(8)
    records = list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), limit=4))
    assert len(records) == 4
    assert len(server.requests) == 2


def test_transiently_empty_page_is_asked_again(server):
    server.api_entries = _papers(6)
    empty = Reply.xml(atom_feed([], total=6, start=3, per_page=3))
    server.fail(empty, when=lambda r: r.query.get("start") == "3")
    stats = HarvestStats()
    records = list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))
    assert len(records) == 6
    assert [r.query["start"] for r in server.requests] == ["0", "3", "3"]
    assert (stats.retries, stats.missing) == (1, 0)


def test_pages_that_stay_empty_end_the_harvest_with_the_shortfall_counted(server):
    server.api_entries, server.api_total = _papers(6), 10
    stats = HarvestStats()
    records = list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))
    assert len(records) == 6
    assert [r.query["start"] for r in server.requests] == ["0", "3", "6", "6", "6"]
    assert (stats.total_results, stats.missing) == (10, 4)


def test_caller_client_is_used_and_left_open(server):
    server.api_entries = _papers(2)
    with httpx.Client() as client:
        assert len(list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), client=client)))
        assert not client.is_closed


# --- politeness -----------------------------------------------------------------------------


def test_requests_are_spaced_by_the_minimum_interval(server):
    server.api_entries = _papers(10)
    list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server, min_interval_s=0.25)))
    assert len(server.requests) == 4
    assert min(_gaps(server.requests)) >= 0.25 - JITTER_S


def test_one_limiter_spaces_consecutive_harvests(server):
    server.api_entries = _papers(2)
    config = _config(server, min_interval_s=0.25)
    limiter = RateLimiter(config.min_interval_s)
    for _ in range(3):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=config, limiter=limiter))
    assert len(server.requests) == 3
    assert min(_gaps(server.requests)) >= 0.25 - JITTER_S


def test_rate_limiter_waits_only_what_is_left():
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(3.0, clock=lambda: now[0], sleep=sleep)
    limiter.wait()
    now[0] += 1.0
    limiter.wait()
    now[0] += 5.0
    limiter.wait()
    assert slept == [pytest.approx(2.0)]


# --- retries and failures -------------------------------------------------------------------


def test_503_with_retry_after_is_honoured_then_succeeds(server):
    server.api_entries = _papers(2)
    server.fail(Reply.error(503, retry_after="1"))
    stats = HarvestStats()
    records = list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))
    assert len(records) == 2
    assert _gaps(server.requests)[0] >= 1.0 - 0.01  # backoff_s alone would be 0.01 s
    assert (stats.requests, stats.retries) == (2, 1)


def test_retry_after_is_capped(server):
    server.api_entries = _papers(1)
    server.fail(Reply.error(429, retry_after="3600"))
    started = time.monotonic()
    list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server, max_backoff_s=0.2)))
    assert time.monotonic() - started < 120  # far from the hour asked for, however loaded
    assert _gaps(server.requests)[0] >= 0.2 - 0.01


def test_retry_after_forms():
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)
    assert retry_after_seconds(
        format_datetime(now + timedelta(seconds=30), usegmt=True), now=now
    ) == pytest.approx(30.0)
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_persistent_500_gives_up_after_max_retries_naming_url_status_and_attempts(server):
    server.fail(*[Reply.error(500)] * 10)
    with pytest.raises(HarvestError) as info:
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server, max_retries=3)))
    assert len(server.requests) == 4
    message = str(info.value)
    assert server.api_url in message and "HTTP 500" in message and "4 attempts" in message


def test_400_fails_at_once_with_the_body(server):
    server.fail(Reply.error(400, body=b"max_results too large"))
    with pytest.raises(HarvestError, match="HTTP 400: max_results too large"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server)))
    assert len(server.requests) == 1


def test_api_error_entry_fails_at_once_with_its_message(server):
    server.fail(Reply.xml(atom_error("search_query is malformed")))
    with pytest.raises(HarvestError, match="search_query is malformed"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server)))
    assert len(server.requests) == 1


def test_cut_off_xml_is_retried(server):
    server.api_entries = _papers(2)
    server.fail(Reply.xml(MALFORMED))
    assert len(list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server)))) == 2
    assert len(server.requests) == 2


def test_xml_that_stays_malformed_ends_in_harvest_error(server):
    server.fail(*[Reply.xml(MALFORMED)] * 3)
    with pytest.raises(HarvestError, match=r"3 attempts; last failure: malformed XML"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server)))


def test_dropped_connection_is_retried(server):
    server.api_entries = _papers(2)
    server.fail(Reply(disconnect=True))
    stats = HarvestStats()
    assert len(list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))) == 2
    assert stats.retries == 1


def test_slow_server_times_out_instead_of_hanging(server):
    # An answer late by far more than the timeout: a client that waited for it would get
    # a valid feed and no error, however slowly the machine runs.
    server.fail(Reply.xml(atom_feed([], total=0, start=0, per_page=3), delay_s=60))
    with pytest.raises(HarvestError, match="Timeout"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server, timeout_s=0.2, max_retries=0)))


def test_trickling_response_is_cut_off_at_the_timeout(server):
    body = atom_feed([], total=0, start=0, per_page=3)
    # A byte every 0.2 s: each read is well within the 2 s timeout, the whole takes minutes,
    # so only the cut-off ends it (a client without one would run into the test's timeout).
    server.fail(Reply.xml(body, chunk_delay_s=0.2, chunks=len(body)))
    with pytest.raises(HarvestError, match=r"not complete after 2\.0 s"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=_config(server, timeout_s=2.0, max_retries=0)))


def test_refused_connection_fails_quickly():
    closed = unused_url()
    config = HarvestConfig(
        api_url=closed, oai_url=closed, min_interval_s=0.01, max_retries=2, backoff_s=0.01
    )
    started = time.monotonic()
    with pytest.raises(HarvestError, match="3 attempts; last failure: ConnectError"):
        list(harvest_api(CS_LG, SINCE, UNTIL, config=config))
    assert time.monotonic() - started < 60  # a refusal, not three 60 s timeouts


def test_bad_arguments_fail_at_the_call_not_at_the_first_record():
    with pytest.raises(ValueError, match="since 2026-01-06 is after until 2026-01-05"):
        harvest_api(CS_LG, UNTIL, SINCE)
    with pytest.raises(ValueError, match="limit"):
        harvest_oai(CS_LG, SINCE, UNTIL, limit=-1)
    with pytest.raises(ValueError, match="page_size"):
        HarvestConfig(page_size=5000)
    with pytest.raises(ValueError, match="oai_format"):
        HarvestConfig(oai_format="oai_dc")


def test_arxiv_hosts_cannot_be_asked_faster_than_the_terms_of_use_allow():
    with pytest.raises(ValueError, match=r"below the 3\.0 s .*export\.arxiv\.org"):
        HarvestConfig(min_interval_s=1.0, oai_url="http://127.0.0.1:9/oai")
    with pytest.raises(ValueError, match="http"):
        HarvestConfig(api_url="ftp://example.org/api")
    assert HarvestConfig().min_interval_s == 3.0


def test_display_url_drops_credentials():
    shown = display_url("http://user:secret@127.0.0.1:9/api/query", {"start": "0"})
    assert shown == "http://127.0.0.1:9/api/query?start=0"


def test_published_date_forms():
    assert published_date("2026-01-05") == date(2026, 1, 5)
    assert published_date("2026-01-05T23:30:00-04:00") == date(2026, 1, 6)
    assert published_date("Mon, 5 Jan 2026 13:54:29 GMT") == date(2026, 1, 5)
    assert published_date("sometime") is None
    assert published_date(None) is None


# --- OAI-PMH --------------------------------------------------------------------------------


def test_oai_follows_resumption_tokens(server):
    papers = _papers(7)
    server.oai_pages = [papers[:3], papers[3:6], papers[6:]]
    stats = HarvestStats()
    records = list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))

    assert _ids(records) == [p.id for p in papers]
    first, *rest = server.requests
    assert first.query == {
        "verb": "ListRecords",
        "metadataPrefix": "arXivRaw",
        "set": "cs:cs:LG",
        "from": "2026-01-05",
        "until": "2026-01-06",
    }
    assert [r.query for r in rest] == [
        {"verb": "ListRecords", "resumptionToken": "tok1"},
        {"verb": "ListRecords", "resumptionToken": "tok2"},
    ]
    assert records[4].location == "page 2 record 2"
    assert "resumptionToken=tok1" in records[4].source
    assert (stats.pages, stats.records, stats.skipped_outside_window) == (3, 7, 0)


def test_oai_keeps_only_papers_first_submitted_in_the_window(server):
    new = _papers(2)
    revised = Paper(
        "2503.00001",
        submitted=datetime(2025, 3, 1, 9, tzinfo=UTC),
        versions=2,
        revised=datetime(2026, 1, 5, 9, tzinfo=UTC),
    )
    deleted = oai_deleted("2301.00007", SINCE)
    server.oai_pages = [[new[0], revised], [deleted, new[1]]]
    stats = HarvestStats()
    records = list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))

    assert _ids(records) == [new[0].id, "2301.00007", new[1].id]
    assert records[1].fields["deleted"] is True
    assert (stats.skipped_outside_window, stats.deleted, stats.records) == (1, 1, 3)


def test_oai_limit_and_stats_shared_by_two_harvests(server):
    server.oai_pages = [_papers(6)[:3], _papers(6)[3:]]
    stats = HarvestStats()
    first = list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats, limit=2))
    second = list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats, limit=4))
    assert (len(first), len(second)) == (2, 4)
    assert (stats.records, stats.requests) == (6, 3)


def test_oai_no_records_match_is_an_empty_success(server):
    stats = HarvestStats()
    assert list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats)) == []
    assert (len(server.requests), stats.records) == (1, 0)


def test_expired_token_restarts_the_listing_once(server):
    papers = _papers(5)
    server.oai_pages = [papers[:3], papers[3:]]
    expired = Reply.xml(oai_error("badResumptionToken", "token expired"))
    server.fail(expired, when=_is_resumption)
    stats = HarvestStats()
    records = list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server), stats=stats))

    assert _ids(records) == [p.id for p in papers]  # the repeated first page is dropped
    assert [_is_resumption(r) for r in server.requests] == [False, True, False, True]
    assert (stats.restarts, stats.duplicates) == (1, 3)


def test_token_expiring_again_after_the_restart_is_an_error(server):
    server.oai_pages = [_papers(5)[:3], _papers(5)[3:]]
    expired = Reply.xml(oai_error("badResumptionToken", "token expired"))
    server.fail(expired, expired, when=_is_resumption)
    with pytest.raises(HarvestError, match=r"badResumptionToken.*again after a restart"):
        list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server)))
    assert len(server.requests) == 4


def test_other_oai_errors_fail_with_code_and_message(server):
    server.fail(Reply.xml(oai_error("cannotDisseminateFormat", "no such format")))
    with pytest.raises(HarvestError, match="cannotDisseminateFormat: no such format") as info:
        list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server)))
    assert server.oai_url in str(info.value)


def test_oai_503_flow_control_is_honoured(server):
    server.oai_pages = [_papers(2)]
    server.fail(Reply.error(503, retry_after="1"))
    assert len(list(harvest_oai(CS_LG, SINCE, UNTIL, config=_config(server)))) == 2
    assert _gaps(server.requests)[0] >= 1.0 - 0.01
