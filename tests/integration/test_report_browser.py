"""report.html in a real browser: headless Chromium, driven by selenium, with the network off.

The page comes from a real ``netuq.compare`` (a small network on the embedded digits, MC dropout,
a calibration loader, two OOD kinds, one shift at severities 2 and 4, class names) rendered by
``render_report``. Checked in Chromium: every image decodes, the table of contents lands on its
sections, a sortable table reorders on a header click, the console stays clean, a 1280 px wide
window has no horizontal overflow, and with JavaScript off the page still shows every table.

Chromium comes from Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="Chromium or chromedriver not found (apt-get install chromium chromium-driver)")
WIDTH = 1280


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    import netuq
    from netuq.data import corrupt, load_digits

    torch.manual_seed(0)
    digits = load_digits(seed=0)
    (xtr, ytr), val, (xte, yte) = digits.train, digits.val, digits.test
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    model.eval()
    g = torch.Generator().manual_seed(1)
    results = netuq.compare(
        {"plain <net>": model, "MC dropout": netuq.MCDropout(model, samples=4, seed=0)},
        [(xte, yte)],
        calibration=[tuple(val)],
        ood={"noise": [(torch.rand(100, 1, 8, 8, generator=g),)],
             "flat": [(torch.rand(100, 1, 1, 1, generator=g).expand(100, 1, 8, 8).clone(),)]},
        shifts={"blur": {s: [(corrupt(xte, "blur", s, seed=s), yte)] for s in (2, 4)}},
        class_names=[f"digit {d}" for d in range(10)],
    )
    out = tmp_path_factory.mktemp("browser")
    return netuq.report.render_report(results, out, dpi=60)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--window-size={WIDTH},900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, report):
    browser.get(report.as_uri())
    return browser


def test_every_image_decodes_and_nothing_is_fetched(page, report):
    images = page.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    pngs = sorted((report.parent / "figures").glob("*.png"))
    assert len(images) == len(pngs) >= 8  # reliability x2, confusion, shift, ROC, histograms, two kinds, risk
    for complete, width, height, alt in images:
        assert complete and width > 0 and height > 0
        assert len(alt) > 30 and not alt.endswith(".png")  # says what the figure shows
    fetched = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in fetched if not u.startswith("data:")] == []


def test_table_of_contents_lands_on_each_section(page):
    links = page.find_elements(By.CSS_SELECTOR, "nav.toc a")
    sections = page.find_elements(By.CSS_SELECTOR, "h2[id]")
    assert [a.get_attribute("hash")[1:] for a in links] == [s.get_attribute("id") for s in sections]
    assert {"calibration", "per-class", "ood", "shift"} <= {s.get_attribute("id") for s in sections}
    for a in links:
        target = a.get_attribute("hash")[1:]
        page.execute_script("window.scrollTo(0, 0)")
        a.click()
        top, inner, at_end = page.execute_script(
            "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
            "return [r.top, window.innerHeight,"
            " window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 1]", target)
        assert page.execute_script("return location.hash") == f"#{target}"
        # at the top of the window, or, near the end of the page, in view as far as the page can scroll
        assert abs(top) <= 2 or (at_end and 0 <= top < inner), (target, top)


def _column(page, table, col: int) -> list[str]:
    return page.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).map(r => r.cells[arguments[1]].textContent.trim())",
        table, col)


def test_sortable_table_reorders_on_header_click(page):
    table = page.find_element(By.CSS_SELECTOR, "#per-class ~ .scroll table.sortable")
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    col = next(i for i, h in enumerate(headers) if h.text.endswith("accuracy ↑"))
    before = [float(v) for v in _column(page, table, col)]
    classes = _column(page, table, 0)
    assert classes == [f"digit {d}" for d in range(10)] and before != sorted(before)
    page.execute_script("arguments[0].scrollIntoView()", headers[col])
    headers[col].click()
    assert [float(v) for v in _column(page, table, col)] == sorted(before)
    assert headers[col].get_attribute("aria-sort") == "ascending"
    headers[col].click()
    assert [float(v) for v in _column(page, table, col)] == sorted(before, reverse=True)
    # grouped rows (a method's name left blank under its first row) get their names back once sorted
    main = page.find_element(By.CSS_SELECTOR, "#calibration ~ .scroll table.sortable")
    names = _column(page, main, 0)
    assert "" in names
    main.find_elements(By.CSS_SELECTOR, "thead th")[2].click()
    assert "" not in _column(page, main, 0)


def test_console_has_no_errors(page, report):
    page.get(report.as_uri())  # a fresh load: everything its script did is logged
    severe = [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []


def test_no_horizontal_overflow_at_1280_px(page, report, tmp_path):
    page.set_window_size(WIDTH, 900)
    page.get(report.as_uri())
    inner, scroll = page.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert inner == WIDTH and scroll <= WIDTH
    shot = tmp_path / "report.png"
    assert page.save_screenshot(str(shot))
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # PNG IHDR
    assert width == WIDTH and height > 0


def test_readable_without_javascript(browser, report):
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(report.as_uri())
        tables = browser.find_elements(By.CSS_SELECTOR, "table")
        assert len(tables) >= 6 and all(t.is_displayed() for t in tables)
        headers = tables[0].find_elements(By.CSS_SELECTOR, "thead th")
        assert all(h.get_attribute("tabindex") is None for h in headers)  # the page's script did not run
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "Calibrators fitted on the calibration set" in text and "severities 2 and 4" in text
        assert browser.find_element(By.CSS_SELECTOR, "nav.toc a").get_attribute("href").endswith("#summary")
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
