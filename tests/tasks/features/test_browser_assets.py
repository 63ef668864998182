"""The feature browser's HTML, CSS and JS files: shipped as package data, inlined in the page.

The browser tests in ``tests/browser`` run from the checkout, where a file missing from
``[tool.setuptools.package-data]`` still reads fine; these checks catch that before a
wheel install of ``sae features`` writes a page without its script.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

from tasks.features.browser import ARXIV_ABS, render_browser
from tests.tasks.features.docs import demo_document

PACKAGE = "tasks.features"
ASSETS = ("browser.html", "browser.css", "browser.js")
PYPROJECT = Path(__file__).parents[3] / "pyproject.toml"


def _read(name: str) -> str:
    return resources.files(PACKAGE).joinpath(name).read_text(encoding="utf-8")


def test_assets_are_package_data():
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data.get(PACKAGE, [])
    for name in ASSETS:
        assert any(fnmatch(name, g) for g in globs), f"{name} is not in package-data"
        assert _read(name).strip(), f"{name} is empty"


def test_page_fills_every_placeholder_and_inlines_css_and_js():
    page = render_browser(demo_document(n_latents=8, n_papers=10, seed=1))
    assert not re.search(r"__[A-Z]+__", page)
    assert _read("browser.css") in page
    assert _read("browser.js").replace("__ARXIV__", ARXIV_ABS) in page
    assert "function openCard(" in page


def test_placeholder_text_in_the_document_is_not_filled():
    doc = demo_document(n_latents=8, n_papers=10, seed=1)
    doc["cell"] = "__DATA__ __JS__"
    page = render_browser(doc)
    assert "<title>features · __DATA__ __JS__</title>" in page
    assert page.count("function openCard(") == 1
