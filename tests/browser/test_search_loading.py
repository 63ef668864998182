"""The search page while `sae serve --preload` still builds an engine: it says which
domain is loading, and stops saying it once the engine is ready (the axis SAE, held back
by the test, stands in for a sweep's)."""

from __future__ import annotations

import threading

from tasks.search.app import create_app
from tasks.search.limits import MAX_STRENGTH, STRENGTH_UNIT
from tests.browser.browser import browser, chromium, screenshot_dir
from tests.tasks.search.axes import engine_for, make_corpus
from tests.tasks.search.serving import serving


def test_the_search_page_says_while_an_engine_is_loading():
    chromium()  # skip (or fail in CI) before starting anything
    release = threading.Event()
    engine = engine_for(make_corpus())[0]

    def opener(domain, model, sweep):
        assert release.wait(120)
        return engine

    app = create_app(opener, ["cs.LG"])
    preload = app.state.engines.preload(["cs.LG"])
    loading = "() => document.querySelector('#loading').textContent"
    try:
        with serving(app) as url, browser(screenshot_dir("search-loading")) as ui:
            ui.open(url)
            ui.wait_for(f"() => ({loading})().includes('Loading the model of cs.LG')")
            ui.check("1-loading")
            release.set()
            ui.wait_for(f"() => ({loading})() === ''")
            ui.page.fill("#query", "q")
            ui.page.click("#go")
            ui.page.locator("#results li").first.wait_for()
            # The hint and the sliders' range come from the one declaration of strengths.
            assert ui.page.inner_text("#strength-unit") == STRENGTH_UNIT
            slider = ui.page.locator("#features li input").first
            assert slider.get_attribute("max") == f"{MAX_STRENGTH:g}"
            ui.check("2-ready")
    finally:
        release.set()
        preload.join(60)
