"""The dashboard in a real browser: examples/dashboard.yaml served by a real
gateway, known events in its ledger, headless Debian Chromium driven by
Playwright. What a user sees must be the ledger's numbers.

Screenshots go to test-artifacts/dashboard/; with SPENDGATE_UPDATE_DOCS_IMAGES=1
the full-page one also replaces docs/images/dashboard.png."""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import Process, free_port
from spendgate.ledger.sqlite import SQLiteLedger
from test_dashboard_api import known_events

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dashboard.yaml"
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWER = "sk-viewer-browser-test"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SQLiteLedger]]:
    tmp = tmp_path_factory.mktemp("dash")
    port = free_port()
    env = {"SPENDGATE_ADMIN_KEY": "sk-admin-browser-test", "DASHBOARD_VIEWER_KEY": VIEWER}
    p = Process(["serve", "--config", str(EXAMPLE), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", env=env, cwd=str(tmp))
    store = SQLiteLedger(tmp / "spendgate.db")  # the gateway's own ledger file
    store.append(known_events(time.time()))
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        store.close()
        p.terminate()


def dsum(store: SQLiteLedger, where: str = "1=1", params: tuple[Any, ...] = ()) -> Decimal:
    """The ledger's own exact sum, as a Decimal: the rollups drop trailing zeros, same value."""
    return Decimal(store.query(f"SELECT coalesce(dsum(cost), '0') FROM usage_events WHERE {where}", params)[0][0])


def cents(text: str) -> str:
    return f"${Decimal(text).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def wait_loaded(page: Any, before: str | None = None) -> None:
    page.wait_for_function("(b) => document.body.dataset.loaded && document.body.dataset.loaded !== b", arg=before or "", timeout=15000)


def test_dashboard_in_chromium_shows_the_ledgers_numbers(served: tuple[str, SQLiteLedger]) -> None:
    from playwright.sync_api import sync_playwright

    url, store = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # signing in: the page sends us to the form, a wrong key is refused
            page.goto(f"{url}/dashboard?range=30d")
            assert page.url.endswith("/dashboard/login")
            page.fill("#key", "sk-wrong")
            page.click("button[type=submit]")
            assert "does not open" in page.inner_text(".error")
            page.fill("#key", VIEWER)
            page.click("button[type=submit]")
            wait_loaded(page)
            cookie = next(c for c in context.cookies() if c["name"] == "spendgate_dashboard")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and VIEWER not in cookie["value"]
            assert page.evaluate("document.cookie") == ""  # scripts cannot read the session
            assert "finance" in page.inner_text(".who")

            # the numbers on screen are the ledger's
            total = dsum(store)
            card = page.locator('.card[data-key="cost"] .value')
            assert Decimal(card.get_attribute("data-exact")) == total and card.inner_text() == cents(str(total))
            chat = page.locator('section[data-view="unit_economics"] tr', has_text="chat").locator('td[data-col="cost"]')
            assert Decimal(chat.inner_text()) == dsum(store, "feature = 'chat'")
            untagged = page.locator('section[data-view="untagged"] tbody tr').first.locator('td[data-col="untagged_cost"]')
            assert Decimal(untagged.inner_text()) == dsum(store, "team IS NULL")
            assert page.locator('section[data-view="budgets"] td[data-col="budget"]').first.inner_text() == "company-monthly"
            assert "not configured" in page.inner_text('section[data-view="slos"]').lower() or "No cost SLOs" in page.inner_text('section[data-view="slos"]')

            # real charts rendered: Chart.js drew non-blank pixels
            for chart in ("chart-spend", "chart-daily", "chart-tiers"):
                assert page.get_attribute(f"#{chart}", "data-rendered") == "1", chart
            painted = page.evaluate(
                """() => { const c = document.getElementById('chart-spend');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
            )
            assert painted > 1000
            page.screenshot(path=str(ARTIFACTS / "dashboard-full.png"), full_page=True)
            if os.environ.get("SPENDGATE_UPDATE_DOCS_IMAGES") == "1":
                (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ARTIFACTS / "dashboard-full.png", ROOT / "docs" / "images" / "dashboard.png")

            # a filter changes the numbers, to the filtered ledger's
            before = page.evaluate("document.body.dataset.loaded")
            page.select_option("#f-team", "search")
            wait_loaded(page, before)
            search = dsum(store, "team = 'search'")
            assert search != total
            assert Decimal(page.locator('.card[data-key="cost"] .value').get_attribute("data-exact")) == search
            assert "team=search" in page.url
            page.screenshot(path=str(ARTIFACTS / "dashboard-team-search.png"), full_page=True)

            # stacking by another dimension redraws the chart's legend
            page.select_option("#stack-by", "feature")
            page.wait_for_function("() => [...document.querySelectorAll('section[data-view=spend_over_time] th')].some(t => t.textContent === 'Feature')")

            # CSV download of a table carries the exact numbers
            with page.expect_download() as info:
                page.click('section[data-view="unit_economics"] a.csv')
            rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
            row = next(r for r in rows if r["feature"] == "summarize")
            assert Decimal(row["cost"]) == dsum(store, "feature = 'summarize' AND team = 'search'") != 0
            assert not errors, errors
        finally:
            browser.close()
