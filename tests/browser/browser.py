"""A real headless Chromium for UI tests: the distribution's, driven through Playwright.

A page fails when it shows error text, when a request of it answers 4xx/5xx (but for the
ones named as known and harmless), when a script on it throws, or when an expected
element does not appear. Screenshots go to ``SAE_UI_SCREENSHOTS`` (default: a folder
under the system's temp dir).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Generous: pages render slowly on a loaded 2-core machine; this is a ceiling, not a bound.
WAIT_MS = 240_000
ERROR_TEXT = re.compile(r"can't load|unexpected token|something went wrong|\berror\b", re.I)
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" ([45]\d\d)')


def chromium() -> str:
    """The Chromium executable; a skip where there is none, a failure in CI."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "no Chromium on PATH (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def screenshot_dir(name: str) -> Path:
    root = os.environ.get("SAE_UI_SCREENSHOTS") or Path(tempfile.gettempdir()) / "sae-ui"
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def server_errors(log_path: Path, allowed: tuple[str, ...] = ()) -> list[str]:
    """The access-log lines of ``log_path`` that answered 4xx/5xx, less ``allowed`` paths."""
    bad = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = ACCESS_LINE.search(line)
        if match and not any(path in match.group(2) for path in allowed):
            bad.append(line)
    return bad


class UI:
    """One browser tab that records what went wrong while it shows pages."""

    def __init__(self, page, shots: Path, allowed: tuple[str, ...]):
        self.page, self.shots, self.allowed = page, shots, allowed
        self.problems: list[str] = []
        page.set_default_timeout(WAIT_MS)
        page.on("response", self._response)
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))

    def _response(self, response) -> None:
        if response.status >= 400 and not any(p in response.url for p in self.allowed):
            self.problems.append(f"{response.status} {response.request.method} {response.url}")

    def open(self, url: str) -> UI:
        self.page.goto(url)
        return self

    def click(self, text: str) -> UI:
        self.page.get_by_text(text, exact=True).first.click()
        return self

    def expect(self, *texts: str) -> UI:
        for text in texts:
            shown = self.page.get_by_text(text).first
            shown.wait_for(state="attached")
            # Pages render what scrolls into view only (MLflow's charts, for one).
            shown.scroll_into_view_if_needed()
            shown.wait_for(state="visible")
        return self

    def wait_for(self, js: str) -> UI:
        self.page.wait_for_function(js, polling=500)
        return self

    def check(self, name: str) -> Path:
        """No error text nor failed request so far; saves and returns a screenshot."""
        # Not "networkidle": MLflow's pages poll for as long as they are open.
        self.page.wait_for_load_state("load")
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        shown = ERROR_TEXT.findall(self.page.inner_text("body"))
        assert not shown, f"{name}: the page shows {shown} (see {path})"
        assert not self.problems, f"{name}: {self.problems} (see {path})"
        return path


@contextlib.contextmanager
def browser(shots: Path, allowed: tuple[str, ...] = ()) -> Iterator[UI]:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as driver:
        # No sandbox: CI runs as root, where Chromium refuses to start with one.
        chrome = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = chrome.new_page(viewport={"width": 1600, "height": 1000})
            yield UI(page, shots, allowed)
        finally:
            chrome.close()
