"""The documentation as a reader sees it: the site, built strictly, served on loopback and loaded
page by page in headless Chromium, with every request off the site refused (as behind a firewall).
Each Mermaid diagram of a page must become an SVG, and the browser must report no error (console,
uncaught exception, failed request) and try no other host.

The browser is the system's Chromium (Debian's ``chromium``, which ``.ci/run`` installs), driven by
Playwright; nothing is downloaded. Without Chromium the tests fail, saying so: they are never
skipped.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, sync_playwright

from tests.support.site import ROOT, build_site

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```mermaid$", re.MULTILINE)
DIAGRAM = '<pre class="mermaid">'
# What works for Chromium on a machine with no network: no sandbox (root), no GPU, and none of
# the browser's own calls home (refused by a closed network, they are logged as errors).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RENDER_SECONDS = 60.0


def _chromium() -> str:
    named = os.environ.get("CUSTOMEVENT_TEST_CHROMIUM")
    found = named or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).is_file():
        pytest.fail(
            "Chromium is not installed, and the rendered documentation check needs it: "
            "`apt-get install chromium` on Debian (.ci/run does), or name a Chromium or Chrome "
            f"binary in CUSTOMEVENT_TEST_CHROMIUM (now {named!r})"
        )
    return found


def _url_path(page: Path) -> str:
    """The page's address in the site (``use_directory_urls``)."""
    relative = page.relative_to(DOCS).with_suffix("")
    if relative.name == "index":
        relative = relative.parent
    return "" if str(relative) == "." else f"{relative.as_posix()}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    """The built site, served on loopback, and a browser to read it with."""

    root: Path
    origin: str
    browser: Browser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    chromium = _chromium()
    root = tmp_path_factory.mktemp("rendered") / "site"
    build = build_site(root)
    assert build.returncode == 0, build.stdout + build.stderr
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-site", daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=FLAGS
            )
            try:
                yield Site(root, f"http://127.0.0.1:{server.server_address[1]}", browser)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Reading:
    """What the browser reported while it loaded one page."""

    errors: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)


@dataclass
class Diagram:
    """A diagram as the page shows it: the SVG in the theme's (closed) shadow root."""

    role: str
    children: int


def _diagrams(page: Page) -> list[Diagram]:
    """Every Mermaid SVG of the page. mkdocs-material draws each into a *closed* shadow root,
    which page scripts cannot see: DevTools' DOM, with shadow roots pierced, can."""
    cdp = page.context.new_cdp_session(page)
    try:
        document = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
    finally:
        cdp.detach()
    found: list[Diagram] = []

    def walk(node: dict[str, Any], in_shadow: bool) -> None:
        if node.get("nodeName") == "svg" and in_shadow:
            attributes = node.get("attributes", [])
            pairs = dict(zip(attributes[::2], attributes[1::2], strict=True))
            role = pairs.get("aria-roledescription", "")
            found.append(Diagram(role, node.get("childNodeCount", 0)))
            return
        for child in node.get("children", []):
            walk(child, in_shadow)
        for shadow in node.get("shadowRoots", []):
            walk(shadow, True)

    walk(document["root"], False)
    return found


def _open(site: Site, path: str, reading: Reading) -> Page:
    context = site.browser.new_context(viewport={"width": 1280, "height": 900})

    def route(route: Route, request: Request) -> None:
        reading.requested.append(request.url)
        if request.url.startswith(site.origin + "/"):
            route.continue_()
        else:
            reading.elsewhere.append(request.url)
            route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            reading.errors.append(f"console: {message.text} ({message.location.get('url')})")

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", console)
    page.on("pageerror", lambda error: reading.errors.append(f"uncaught: {error}"))
    page.on(
        "requestfailed",
        lambda request: reading.errors.append(f"request failed: {request.url} {request.failure}"),
    )
    page.goto(f"{site.origin}/{path}", wait_until="load")
    return page


def _rendered(page: Page, expected: int) -> list[Diagram]:
    """The page's diagrams once all ``expected`` are drawn (or what there is at the time limit)."""
    deadline = time.monotonic() + RENDER_SECONDS
    diagrams = _diagrams(page)
    while len(diagrams) < expected and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        diagrams = _diagrams(page)
    return diagrams


@pytest.mark.parametrize("source", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_the_page_renders_its_diagrams_offline_without_errors(source: Path, site: Site) -> None:
    path = _url_path(source)
    html = (site.root / path / "index.html").read_text()
    fences = len(FENCE.findall(source.read_text()))
    assert html.count(DIAGRAM) == fences, f"/{path}: {fences} mermaid fences, not all in the HTML"
    reading = Reading()
    page = _open(site, path, reading)
    try:
        diagrams = _rendered(page, fences)
        # Errors a diagram may log after its SVG appears: give them a moment to show.
        page.wait_for_timeout(200 if fences else 0)
    finally:
        page.context.close()
    assert not reading.elsewhere, f"/{path}: tried hosts other than the site: {reading.elsewhere}"
    reported = "\n".join(reading.errors)
    assert not reading.errors, f"/{path}: the browser reported errors:\n{reported}"
    assert len(diagrams) == fences, f"/{path}: {len(diagrams)} of {fences} diagrams drawn"
    for number, diagram in enumerate(diagrams, 1):
        assert diagram.role and diagram.role != "error", f"/{path}: diagram {number}: {diagram}"
        assert diagram.children > 0, f"/{path}: diagram {number} is an empty SVG"
    if fences:
        script = [url for url in reading.requested if url.endswith("/mermaid.min.js")]
        assert script and script[0].startswith(site.origin), (path, script)


def test_index_page_screenshot(site: Site, tmp_path: Path) -> None:
    """The home page as the reader sees it, architecture diagram drawn, saved for a person to
    look at (its path is printed: `pytest -s`)."""
    reading = Reading()
    page = _open(site, "", reading)
    try:
        assert _rendered(page, 1), "the architecture diagram was not drawn"
        shot = tmp_path / "index.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.context.close()
    assert not reading.errors, reading.errors
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the rendered index page: {shot}")


def test_operate_page_shows_the_dashboard_panels(site: Site, tmp_path: Path) -> None:
    """The Operate page's figure of the chart's dashboard, as the reader sees it: every panel of
    the shipped dashboard JSON drawn, with its title, where Grafana places it (no two overlap),
    saved as a screenshot for a person to look at (its path is printed: `pytest -s`)."""
    shipped = json.loads(
        (
            ROOT / "charts" / "customevent-bridge" / "dashboards" / "customevent-bridge.json"
        ).read_text()
    )
    reading = Reading()
    page = _open(site, "operate/", reading)
    try:
        figure = page.locator("#dashboard-figure")
        panels = figure.locator(".ce-panel")
        assert panels.count() == len(shipped["panels"])
        titles = [
            panels.nth(i).locator(".ce-panel-title").inner_text() for i in range(panels.count())
        ]
        assert titles == [panel["title"] for panel in shipped["panels"]]
        boxes = [panels.nth(i).bounding_box() for i in range(panels.count())]
        frame = figure.bounding_box()
        assert frame is not None and all(box is not None for box in boxes)
        for i, a in enumerate(boxes):
            assert a is not None and a["width"] > 100 and a["height"] > 50, titles[i]
            assert a["x"] + a["width"] <= frame["x"] + frame["width"] + 1, titles[i]
            for j, b in enumerate(boxes[i + 1 :], i + 1):
                assert b is not None
                apart = (
                    a["x"] + a["width"] <= b["x"] + 1
                    or b["x"] + b["width"] <= a["x"] + 1
                    or a["y"] + a["height"] <= b["y"] + 1
                    or b["y"] + b["height"] <= a["y"] + 1
                )
                assert apart, f"{titles[i]} overlaps {titles[j]}"
        shot = tmp_path / "dashboard.png"
        # The theme's sticky header would cover the figure's top once it is scrolled to.
        page.add_style_tag(content=".md-header { display: none; }")
        figure.screenshot(path=str(shot))
    finally:
        page.context.close()
    assert not reading.errors, reading.errors
    assert shot.stat().st_size > 20_000
    print(f"\nscreenshot of the Operate page's dashboard figure: {shot}")


# The charts the Performance page must show (docs/performance/run.json records each).
PERFORMANCE_CHARTS = ("cluster", "core", "groups", "http", "latency", "mqtt", "retain")


def test_performance_page_fits_1280px_and_every_chart_loads(site: Site, tmp_path: Path) -> None:
    """At 1,280 px nothing runs off the page (the regenerate block scrolls or wraps inside its
    box), and every chart image is loaded and drawn at a readable size; a screenshot is saved for
    a person to look at (`pytest -s` prints its path)."""
    reading = Reading()
    page = _open(site, "performance/", reading)
    try:
        page.wait_for_function(
            "[...document.images].every(image => image.complete)", timeout=30_000
        )
        width = page.evaluate("document.documentElement.scrollWidth")
        viewport = page.evaluate("document.documentElement.clientWidth")
        # Any element whose box reaches past the viewport, unless a box of its own scrolls it.
        outside = page.evaluate(
            """() => [...document.querySelectorAll('.md-content *')].filter(element => {
                const box = element.getBoundingClientRect();
                if (box.width === 0 || box.right <= document.documentElement.clientWidth) {
                    return false;
                }
                for (let up = element.parentElement; up; up = up.parentElement) {
                    const style = getComputedStyle(up);
                    if (['auto', 'scroll', 'hidden'].includes(style.overflowX)) {
                        return up.getBoundingClientRect().right
                            > document.documentElement.clientWidth;
                    }
                }
                return true;
            }).map(element => element.tagName + '.' + element.className).slice(0, 10)"""
        )
        images = page.evaluate(
            """() => [...document.querySelectorAll('.md-content img')].map(image => ({
                src: image.getAttribute('src'), natural: image.naturalWidth,
                shown: image.getBoundingClientRect().width,
                right: image.getBoundingClientRect().right}))"""
        )
        code = page.evaluate(
            """() => [...document.querySelectorAll('.md-content pre > code')].map(code =>
                ({overflow: getComputedStyle(code).overflowX,
                  fits: code.getBoundingClientRect().right
                      <= document.documentElement.clientWidth}))"""
        )
        shot = tmp_path / "performance.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.context.close()
    assert not reading.errors, reading.errors
    assert width <= viewport <= 1280 and not outside, (
        f"off the page at 1280 px: {width} px wide, {outside}"
    )
    shown = sorted(Path(image["src"]).stem for image in images)
    assert shown == sorted(PERFORMANCE_CHARTS), shown
    for image in images:
        assert image["natural"] > 0, f"chart not loaded: {image['src']}"
        assert image["shown"] >= 600 and image["right"] <= viewport, image
    assert code and all(c["fits"] and c["overflow"] in ("auto", "scroll") for c in code), code
    print(f"\nscreenshot of the rendered Performance page: {shot}")
