"""The search page in a real headless browser: Playwright's sync API driving Debian's chromium
against the live app (uvicorn in a thread) over a BM25-only demo index with a deterministic,
calibrated fake reranker, so that the page has click probabilities to show.

One browser and one server serve the whole module; each test gets a fresh browser context
(a fresh sessionStorage). The module is skipped when the playwright package or a chromium
binary is missing: Playwright's own browser download cannot work offline, so it runs the
distribution's chromium (``apt-get install chromium``).

``SHOPSEARCH_SCREENSHOT=path/to/file.png`` makes the main test save a full-page screenshot of
the results for 夏季连衣裙 (docs/search-page.png is made that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is not installed: pip install -e '.[dev]'",
)


def _find_chromium() -> str | None:
    for candidate in (
        os.environ.get("SHOPSEARCH_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed: apt-get install chromium "
        "(or point SHOPSEARCH_CHROMIUM at a chromium binary)",
        allow_module_level=True,
    )

TOKEN = "browser-test-token"
QUERY = "夏季连衣裙"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


class FakeReranker:
    """Deterministic and query-aware: the share of the query's words (English) or characters
    (Chinese) found in the product text, less a little for long texts; probabilities are the
    logits' sigmoid."""

    name = "fake"
    calibrated = True
    max_length = 32

    def logits(self, query: str, texts: list[str]) -> np.ndarray:
        wanted: set[str] = set()
        for word in query.casefold().split():
            wanted.update([word] if word.isascii() else list(word))
        out = []
        for text in texts:
            folded = text.casefold()
            overlap = sum(c in folded for c in wanted) / max(len(wanted), 1)
            out.append(3.0 * overlap - 1.0 - len(text) / 50.0)
        return np.asarray(out, dtype=np.float64)

    def probabilities(self, logits: Any) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


@dataclass
class LiveServer:
    base_url: str
    feedback_dir: Path

    def flush(self) -> dict[str, Any]:
        import httpx

        response = httpx.post(
            f"{self.base_url}/admin/feedback/flush",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    import httpx
    import uvicorn

    from shopsearch.demo.catalog import generate_catalog
    from shopsearch.engine import SearchEngine
    from shopsearch.index.store import build_index, load_index
    from shopsearch.serve.app import ServeConfig, create_app

    tmp = tmp_path_factory.mktemp("browser")
    build_index(generate_catalog(), tmp / "idx", encoder=None)

    def open_engine(path: Path) -> SearchEngine:
        return SearchEngine(load_index(path), reranker=FakeReranker())

    config = ServeConfig(
        index=str(tmp / "idx"),
        feedback_dir=str(tmp / "feedback"),
        admin_token=TOKEN,
        watch_interval_s=30.0,
        export_interval_s=30.0,
    )
    app = create_app(config, open_engine=open_engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound before the server starts: no free-port race
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.02)
    base_url = f"http://127.0.0.1:{port}"
    # The first query loads the Chinese tokenizer's dictionary (about a second): do it here.
    assert httpx.get(f"{base_url}/search", params={"q": "预热 warm up"}).status_code == 200
    try:
        yield LiveServer(base_url, tmp / "feedback")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def browser_chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
        except sync_api.Error as exc:
            pytest.skip(f"chromium at {CHROMIUM} does not start under Playwright: {exc}")
        yield browser
        browser.close()


@pytest.fixture
def browser_page(browser_chromium: Any, browser_server: LiveServer) -> Iterator[Any]:
    context = browser_chromium.new_context(
        viewport={"width": 1200, "height": 900}, base_url=browser_server.base_url
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    page_errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto("/")
    page.wait_for_selector("#category[data-loaded='true']", state="attached")
    yield page
    context.close()
    assert page_errors == [], f"the page raised: {page_errors}"
    assert dialogs == [], f"the page opened dialogs: {dialogs}"


# -- helpers -------------------------------------------------------------------------------


def _is_search(response: Any) -> bool:
    return urlparse(response.url).path == "/search"


def _wait_rendered(page: Any, request_id: str) -> None:
    page.wait_for_function(
        "rid => document.body.dataset.state === 'done'"
        " && document.getElementById('results').dataset.requestId === rid",
        arg=request_id,
    )


def search(page: Any, query: str, submit: str = "#search-button") -> dict[str, Any]:
    """Type ``query``, submit, wait until the page has drawn the answer; its JSON."""
    page.fill("#q", query)
    with page.expect_response(_is_search) as info:
        page.click(submit)
    response = info.value
    assert response.status == 200, response.text()
    body = response.json()
    _wait_rendered(page, body["request_id"])
    return body


def wait_for_search(page: Any, action: Any) -> dict[str, Any]:
    """Run ``action`` (something that makes the page search by itself) and wait as above."""
    with page.expect_response(_is_search) as info:
        action()
    body = info.value.json()
    _wait_rendered(page, body["request_id"])
    return body


def shown(page: Any) -> list[dict[str, Any]]:
    """What each result on the page shows."""
    return page.eval_on_selector_all(
        ".result",
        """items => items.map(li => ({
            id: li.dataset.productId,
            rank: Number(li.dataset.rank),
            title: li.querySelector('.title').textContent,
            category: li.querySelector('.category')?.textContent ?? null,
            price: li.querySelector('.price').textContent,
            pclick: li.querySelector('.p-click')?.textContent ?? null,
            scores: Object.fromEntries([...li.querySelectorAll('.scores [data-score]')]
                .map(d => [d.dataset.score, d.querySelector('dd').textContent])),
            matched: [...li.querySelectorAll('.matched-terms .term')].map(t => t.textContent),
        }))""",
    )


# -- tests ---------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served(browser_server: LiveServer) -> None:
    import httpx

    for path, kind in [
        ("/", "text/html"),
        ("/static/app.js", "javascript"),
        ("/static/style.css", "text/css"),
    ]:
        response = httpx.get(browser_server.base_url + path)
        assert response.status_code == 200, (
            f"GET {path} answered {response.status_code}: the page cannot work without it"
        )
        assert kind in response.headers["content-type"]


def test_chinese_search_shows_click_probabilities_and_logs_the_click(
    browser_page: Any, browser_server: LiveServer
) -> None:
    page = browser_page
    body = search(page, QUERY)
    results = shown(page)

    assert len(results) == 10 == len(body["results"])
    assert [r["id"] for r in results] == [r["id"] for r in body["results"]]
    assert [r["rank"] for r in results] == list(range(1, 11))
    for title in [r["title"] for r in results[:5]]:
        assert "连衣裙" in title
    for on_page, served in zip(results, body["results"]):
        assert on_page["title"] == served["title"]
        assert on_page["category"] == served["category"]
        assert on_page["pclick"] == f"p(click) {served['click_probability']:.2f}"
        assert re.fullmatch(r"¥[\d,]+\.\d\d", on_page["price"])
    assert page.text_content("#status .query") == QUERY
    assert page.is_hidden("#error") and page.is_hidden("#empty")
    assert page.is_hidden("#timings"), "timings are for explain mode only"

    second = page.locator('.result[data-rank="2"]')
    product_id = second.get_attribute("data-product-id")
    assert product_id == body["results"][1]["id"]
    url_before = page.url
    with page.expect_response(lambda r: urlparse(r.url).path == "/events") as info:
        second.locator(".title").click()
    event = info.value
    assert event.status == 200, event.text()
    assert json.loads(event.request.post_data or "{}") == {
        "request_id": body["request_id"],
        "product_id": product_id,
        "type": "click",
    }
    assert event.json()["position"] == 2
    page.wait_for_selector('.result[data-rank="2"][data-click-state="recorded"]')
    assert second.get_attribute("data-clicked") == "true"
    assert page.url == url_before, "a click must not navigate away"
    assert page.locator('.result[data-clicked="true"]').count() == 1

    if os.environ.get("SHOPSEARCH_SCREENSHOT"):  # the results page, the 2nd result clicked
        page.mouse.move(0, 0)
        page.screenshot(path=os.environ["SHOPSEARCH_SCREENSHOT"], full_page=True)

    session_id = page.evaluate("sessionStorage.getItem('shopsearch.session_id')")
    assert session_id and re.fullmatch(r"[0-9a-f]{32}", session_id)

    from shopsearch.training.clicks import read_click_log

    files = [Path(f) for f in browser_server.flush()["files"]]
    assert files and all(f.parent == browser_server.feedback_dir for f in files)
    impressions = [i for f in files for i in read_click_log(f)]
    clicked = [i for i in impressions if i.clicked]
    assert len(clicked) == 1
    assert clicked[0].product_id == product_id
    assert clicked[0].position == 2
    assert clicked[0].query == QUERY
    assert clicked[0].session_id == session_id
    ours = [
        json.loads(line)
        for f in files
        for line in f.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["request_id"] == body["request_id"]
    ]
    assert [r["position"] for r in ours] == list(range(1, 11))
    assert [r["product_id"] for r in ours] == [r["id"] for r in body["results"]]


def test_explain_shows_stage_scores_matched_terms_and_timings(browser_page: Any) -> None:
    page = browser_page
    page.check("#explain")
    body = search(page, QUERY)
    request = parse_qs(urlparse(page.url).query)
    assert request.get("explain") == ["true"]

    results = shown(page)
    assert results
    for on_page, served in zip(results, body["results"]):
        assert set(on_page["scores"]) >= {"bm25", "fused", "click_logit", "click_probability"}
        assert on_page["scores"]["bm25"] == f"{served['bm25']:.3f}"
        assert on_page["matched"] == served["matched_terms"]
    assert "连衣裙" in results[0]["matched"]

    assert page.is_visible("#timings")
    steps = page.eval_on_selector_all("#timings [data-step]", "els => els.map(e => e.dataset.step)")
    assert steps == [s for s in body["timings_ms"] if s != "total"]
    assert {"bm25", "rerank"} <= set(steps)
    terms = page.eval_on_selector_all("#query-terms .term", "els => els.map(e => e.textContent)")
    assert terms == body["query_terms"]

    # Turning explain off searches again, without the scores.
    wait_for_search(page, lambda: page.uncheck("#explain"))
    assert page.is_hidden("#timings")
    assert page.locator(".result .scores").count() == 0
    assert page.locator(".result .matched-terms").count() == 0
    assert page.locator(".result .p-click").count() == 10


def test_category_and_price_filters_restrict_every_result(browser_page: Any) -> None:
    page = browser_page
    options = page.eval_on_selector_all("#category option", "os => os.map(o => o.value)")
    assert options[0] == "" and "连衣裙" in options and "Bedroom Furniture" in options
    assert page.text_content("#category option") == "All categories"

    unfiltered = search(page, "夏季")
    assert len({r["category"] for r in unfiltered["results"]}) > 1

    body = wait_for_search(page, lambda: page.select_option("#category", "连衣裙"))
    results = shown(page)
    assert len(results) == 10
    assert {r["category"] for r in results} == {"连衣裙"}
    assert parse_qs(urlparse(page.url).query)["category"] == ["连衣裙"]

    page.fill("#min-price", "100")
    page.fill("#max-price", "300")
    body = wait_for_search(page, lambda: page.press("#max-price", "Enter"))
    assert body["results"]
    assert all(r["category"] == "连衣裙" for r in body["results"])
    assert all(100 <= r["price"] <= 300 for r in body["results"])
    assert {r["category"] for r in shown(page)} == {"连衣裙"}


def test_an_english_query_finds_english_products(browser_page: Any) -> None:
    page = browser_page
    search(page, "king poster bed")
    results = shown(page)
    assert len(results) == 10
    for title in [r["title"].lower() for r in results[:3]]:
        assert "poster bed" in title and "king" in title
    assert all(r["pclick"] for r in results)


def test_markup_in_the_query_or_the_address_is_shown_never_run(
    browser_page: Any, browser_server: LiveServer
) -> None:
    page = browser_page
    search(page, XSS)
    assert page.evaluate("window.__xss") is None
    assert page.text_content("#status .query") == XSS
    assert page.locator("img").count() == 0
    assert page.locator("main script").count() == 0

    # The same through a shared address: the category comes back in a server note.
    page.goto("/?" + urlencode({"q": "dress", "category": XSS}))
    page.wait_for_selector("#notes li")
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 0
    assert XSS in page.text_content("#notes")
    assert page.input_value("#category") == XSS
    assert page.is_visible("#empty")
    assert page.text_content("#empty").startswith("No products found")


def test_an_empty_query_asks_for_words_without_a_request(browser_page: Any) -> None:
    page = browser_page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    for query in ["", "   "]:
        page.fill("#q", query)
        page.click("#search-button")
        page.wait_for_selector("body[data-state='idle']")
        assert "Type what you are looking for" in page.text_content("#status")
        assert page.is_hidden("#error")
        assert page.locator(".result").count() == 0
    assert not [u for u in requests if urlparse(u).path == "/search"]


def test_a_server_error_is_shown_in_the_error_area(browser_page: Any) -> None:
    page = browser_page
    search(page, "连衣裙")
    page.fill("#min-price", "500")
    page.fill("#max-price", "100")
    with page.expect_response(_is_search) as info:
        page.click("#search-button")
    response = info.value
    assert response.status == 400
    message = response.json()["error"]["message"]
    assert "min_price" in message
    page.wait_for_selector("body[data-state='error']")
    assert page.is_visible("#error")
    assert page.text_content("#error") == message
    assert page.locator(".result").count() == 0
    assert page.is_hidden("#empty")
