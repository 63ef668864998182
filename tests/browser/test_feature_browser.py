"""The feature browser page (:mod:`tasks.features.browser`) in a real headless Chromium.

The page is opened from a file (``file://``), as a user opens the downloaded artifact:
no server stands between the test and the page, so every request that is not for the
file itself is one the page should never make (it must work offline) and fails the test.
MLflow's artifact viewer is the other way in: it loads the page from a blob URL into an
iframe sandboxed to ``allow-scripts``; one test does the same, under an http origin that
Playwright answers itself (no server either).

The expected rows, orders and counts are computed here, in Python, from the document.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.features.browser import ARXIV_ABS, embed_json, render_browser
from tests.browser.browser import UI, browser, chromium, screenshot_dir
from tests.tasks.features.docs import CATEGORIES, HOSTILE_TITLE, TERMS, demo_document

pytestmark = pytest.mark.timeout(900)

DATA = re.compile(r'<script type="application/json" id="features-data">(.*?)</script>', re.S)
ROWS = "#features tbody tr"


@pytest.fixture(scope="module")
def doc() -> dict:
    return demo_document(n_latents=60, n_papers=200, seed=0)


def _embedded(page: str):
    match = DATA.search(page)
    assert match, "no features-data block"
    return json.loads(match.group(1))


# ---- the page's text, no browser -----------------------------------------------------------


def test_page_is_self_contained_and_embeds_the_document(doc):
    page = render_browser(doc)
    assert _embedded(page) == doc
    # The one address in the page: arxiv.org's, which the script puts before paper ids.
    assert re.findall(r"https?://[^\s'\"]*", page) == [ARXIV_ABS]
    assert not re.findall(r"(?<![:\w])//[\w-]+\.[\w.-]+", page)  # no protocol-relative URL
    assert not re.search(r"<(link|img|iframe|object|embed|base)\b|\bsrc=|@import|url\(", page)
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<title>features · demo_60</title>" in page


def test_markup_and_nan_in_the_document_stay_inside_the_data_block():
    doc = demo_document(n_latents=8, n_papers=10, seed=1)
    doc["papers"][1]["title"] = "</SCRIPT><script>alert(1)</script> & <!-- \u2028 >"
    doc["features"][2]["label"] = ["<b>bold</b>", "&amp;", "]]>"]
    doc["cell"] = "</title><script>x</script>"
    page = render_browser(doc)
    block = DATA.search(page).group(1)
    assert not set("<>&\u2028") & set(block)
    assert json.loads(block) == doc
    assert page.count("<script") == 2  # the title is escaped too
    doc["features"][3]["f1"] = float("nan")
    assert json.loads(embed_json(doc))["features"][3]["f1"] is None


# ---- in Chromium ---------------------------------------------------------------------------


def _offline(ui: UI, *allowed: str) -> UI:
    """Every request but for the page's own file (or ``allowed`` prefixes) is a problem."""
    ok = ("file://", "data:", "blob:", *allowed)

    def request(req) -> None:
        if not req.url.startswith(ok):
            ui.problems.append(f"request to {req.url}")

    ui.page.on("request", request)
    ui.page.on("requestfailed", lambda req: ui.problems.append(f"failed: {req.url}"))
    ui.page.on(
        "console",
        lambda msg: msg.type == "error" and ui.problems.append(f"console: {msg.text}"),
    )
    return ui


def _load(ui: UI, path: Path, hash: str = "") -> None:
    """A fresh load of the page (not a same-document hash change), ready to use."""
    ui.page.goto("about:blank")
    ui.open(path.as_uri() + hash)
    ui.wait_for("() => document.getElementById('showing').dataset.matched !== undefined")


def _search(ui: UI, text: str) -> None:
    ui.page.fill("#search", text)
    ui.page.wait_for_function(
        "q => document.getElementById('showing').dataset.query === q", arg=text, polling=100
    )


def _row_ids(ui: UI) -> list[int]:
    return [int(x) for x in ui.page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.dataset.id)")]


def _card(ui: UI, fid: int) -> None:
    ui.page.wait_for_function(
        "id => document.getElementById('card').dataset.feature === String(id)", arg=fid
    )
    assert ui.page.inner_text("#card h2") == f"#{fid}"


def _hash(ui: UI) -> str:
    return ui.page.evaluate("location.hash")


@pytest.fixture
def page_file(tmp_path, doc) -> Path:
    chromium()
    path = tmp_path / "browser.html"
    path.write_text(render_browser(doc), encoding="utf-8")
    return path


def test_feature_browser_filters_sorts_and_opens_cards(page_file, doc):
    feats = doc["features"]
    live = [f for f in feats if f["density"] > 0]
    dead = [f for f in feats if f["density"] == 0]
    shots = screenshot_dir("feature-browser")

    with browser(shots) as ui:
        _offline(ui)
        _load(ui, page_file)
        ui.expect(doc["cell"], doc["model"], "hide dead", "arXiv category probes")
        # With no card open, the category probes: one row each.
        assert ui.page.locator("#probes tbody tr").count() == len(doc["probes"])
        assert _row_ids(ui) == [f["id"] for f in live]  # hide dead: on by default
        assert ui.page.inner_text("#showing").startswith(f"showing {len(live)} of {len(live)}")
        ui.check("1-table")

        # A label term, part of it, in capitals: the features with a term holding it.
        counts = {t: sum(t in f["label"] for f in live) for t in TERMS}
        term = min((t for t in TERMS if 2 <= counts[t] < len(live)), key=lambda t: (counts[t], t))
        query = term[1:].upper()
        held = [f["id"] for f in live if any(query.lower() in t.lower() for t in f["label"])]
        _search(ui, query)
        assert _row_ids(ui) == held and 2 <= len(held) < len(live)
        for label in ui.page.eval_on_selector_all(ROWS, "rs => rs.map(r => r.cells[1].title)"):
            assert query.lower() in label.lower()
        ui.check("2-search")

        # An id: that feature, dead or not, with or without '#'.
        _search(ui, f"#{dead[0]['id']}")
        assert _row_ids(ui) == [dead[0]["id"]]
        _search(ui, str(live[3]["id"]))
        assert _row_ids(ui) == [live[3]["id"]]
        _search(ui, "")
        assert len(_row_ids(ui)) == len(live)

        # An arXiv category: the live features over-represented in it, then any again.
        def over(f, c):
            return any(x[0] == c for x in f["categories"])

        by_cat = {c: [f["id"] for f in live if over(f, c)] for c in CATEGORIES}
        cat = max((c for c in CATEGORIES if len(by_cat[c]) < len(live)), key=by_cat.get)
        options = ui.page.eval_on_selector_all("#category option", "os => os.map(o => o.text)")
        assert f"{cat} ({sum(over(f, cat) for f in feats)} features)" in options
        ui.page.select_option("#category", cat)
        ui.wait_for(f"document.getElementById('showing').dataset.matched == {len(by_cat[cat])}")
        assert _row_ids(ui) == by_cat[cat] and len(by_cat[cat]) >= 2
        ui.page.click(f"{ROWS}[data-id='{by_cat[cat][0]}']")
        _card(ui, by_cat[cat][0])
        shown = ui.page.inner_text("#card dd.cats")
        assert cat in shown and f"({feats[by_cat[cat][0]]['categories'][0][2]})" in shown
        ui.check("2b-category")
        ui.page.click("#card [data-close]")
        ui.page.select_option("#category", "")
        assert len(_row_ids(ui)) == len(live)

        # Sorting: the densest first, then (again) the sparsest first; F1 with "–" last.
        ui.page.click("th[data-key=density]")
        by_density = sorted(live, key=lambda f: (-f["density"], f["id"]))
        assert _row_ids(ui) == [f["id"] for f in by_density]
        ui.page.click("th[data-key=density]")
        assert _row_ids(ui)[0] == min(live, key=lambda f: (f["density"], f["id"]))["id"]
        ui.page.click("th[data-key=f1]")
        scored = sorted((f for f in live if f["f1"] is not None), key=lambda f: (-f["f1"], f["id"]))
        unscored = [f for f in live if f["f1"] is None]
        assert unscored and _row_ids(ui) == [f["id"] for f in scored + unscored]
        assert ui.page.inner_text(f"{ROWS}:last-child td:nth-child(5)") == "–"
        ui.page.click("th[data-key=id]")

        # A row's card: its top paper (markup in its title shown as text) and arXiv link.
        first = feats[0]
        top_paper = doc["papers"][first["top"][0][0]]
        assert top_paper["title"] == HOSTILE_TITLE
        ui.page.click(f"{ROWS}[data-id='0']")
        _card(ui, 0)
        assert _hash(ui) == "#f0"
        link = ui.page.locator("#card ol.papers a").first
        assert link.inner_text() == HOSTILE_TITLE
        assert link.get_attribute("href") == f"{ARXIV_ABS}{top_paper['id']}"
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("rel") == "noopener"
        assert ui.page.locator("#card b, #features b").count() == 0
        card = ui.page.inner_text("#card")
        assert all(term in card for term in first["label"])
        assert f"· {round(first['density'] * doc['n_papers'])} papers" in card

        # A neighbour's link opens that feature's card; Back goes to the one before.
        near = first["neighbours"][0][0]
        ui.page.click(f"#card ul.links a[data-f='{near}']")
        _card(ui, near)
        assert _hash(ui) == f"#f{near}"
        ui.page.go_back()
        _card(ui, 0)

        # Opened with #f<id>: that card, here one in a family two levels deep.
        fam = next(f for f in doc["families"] if f["depth"] == 2)
        kid = next(m for m in fam["members"] if feats[m]["children"] and m != fam["parent"])
        _load(ui, page_file, f"#f{kid}")
        _card(ui, kid)
        tree = ui.page.locator("#card ul.tree")
        nested = "#card ul.tree > li > ul > li > ul > li"
        assert tree.locator("a[data-f]").count() == len(fam["members"])
        assert ui.page.locator(nested).count() == len(feats[kid]["children"])
        assert ui.page.locator(f"#card .rel a[data-f='{fam['parent']}']").count() == 1
        ui.expect("parent", "children")
        ui.page.locator("#card h3", has_text="Family").scroll_into_view_if_needed()
        ui.check("3-card-family")
        ui.page.click(f"#card .rel a[data-f='{fam['parent']}']")
        _card(ui, fam["parent"])

        # A label without held-out scores.
        blank = next(f for f in live if f["f1"] is None and f["pearson"] is None)
        _load(ui, page_file, f"#f{blank['id']}")
        _card(ui, blank["id"])
        ui.expect("too few held-out papers")
        ui.check("4-card-too-few")
        # A hash change on the loaded page opens that card too.
        ui.page.evaluate(f"location.hash = '#f{live[1]['id']}'")
        _card(ui, live[1]["id"])


def test_feature_browser_in_a_sandboxed_viewer_iframe(doc):
    """As MLflow 3's artifact viewer shows it: a blob URL in ``sandbox="allow-scripts"``."""
    chromium()
    origin = "http://viewer.test"
    parent = '<!doctype html><iframe id="viewer" sandbox="allow-scripts" '
    parent += 'style="width:1560px;height:940px;border:0"></iframe>'
    with browser(screenshot_dir("feature-browser")) as ui:
        _offline(ui, f"{origin}/")
        ui.page.route(
            f"{origin}/**", lambda route: route.fulfill(body=parent, content_type="text/html")
        )
        ui.open(f"{origin}/artifacts")
        ui.page.evaluate(
            """html => { document.getElementById('viewer').src =
                URL.createObjectURL(new Blob([html], {type: 'text/html'})); }""",
            render_browser(doc),
        )
        frame = ui.page.frame_locator("#viewer")
        frame.locator(f"{ROWS}[data-id='0']").click()
        frame.locator("#card h2", has_text="#0").wait_for()
        near = doc["features"][0]["neighbours"][0][0]
        frame.locator(f"#card ul.links a[data-f='{near}']").click()
        frame.locator("#card h2", has_text=f"#{near}").wait_for()
        (viewer,) = [f for f in ui.page.frames if f != ui.page.main_frame]
        assert viewer.url.startswith("blob:")  # the iframe stayed on the page
        ui.check("5-sandboxed-viewer")


@pytest.mark.slow
def test_feature_browser_pages_through_a_full_size_cell(tmp_path):
    """12,288 features over 50,000 papers: 200 rows at a time, "more" for the next 200."""
    chromium()
    doc = demo_document(n_latents=12_288, n_papers=50_000, seed=2)
    live = [f for f in doc["features"] if f["density"] > 0]
    path = tmp_path / "browser.html"
    path.write_text(render_browser(doc), encoding="utf-8")

    with browser(screenshot_dir("feature-browser")) as ui:
        _offline(ui)
        _load(ui, path)
        loaded = ui.page.evaluate("performance.now()")
        print(f"{path.stat().st_size / 1e6:.1f} MB page shown in {loaded:.0f} ms")
        assert len(_row_ids(ui)) == 200
        assert ui.page.inner_text("#showing").startswith(f"showing 200 of {len(live):,}")
        ui.page.click("#more")
        assert _row_ids(ui) == [f["id"] for f in live[:400]]
        ui.page.click("th[data-key=density]")
        by_density = sorted(live, key=lambda f: (-f["density"], f["id"]))
        assert _row_ids(ui) == [f["id"] for f in by_density[:200]]

        took = ui.page.evaluate(
            """() => { const t = performance.now(), s = document.getElementById('search');
                s.value = 'graph'; s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));
                return performance.now() - t; }"""
        )
        held = [f for f in live if any("graph" in t for t in f["label"])]
        assert ui.page.get_attribute("#showing", "data-matched") == str(len(held))
        print(f"filter + sort + 200 rows over {len(doc['features'])} features: {took:.0f} ms")
        _search(ui, "#12000")
        assert _row_ids(ui) == [12_000]
        ui.check("6-full-size")
