"""The explorer in a real browser: headless Chromium, driven through Selenium and the system's
chromedriver, clicks through every view of ``make_app("toy-icl")`` served on a loopback port and
checks that each interaction reaches the server and comes back drawn, with no console error and
no two plotly annotations drawn on top of each other.

``ICL_EXPLORER_SCREENSHOTS=1`` also saves a 1400x1000 screenshot of each view to docs/explorer/
(the committed ones come from such a run; CI leaves the tree clean).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.browser import COLLECTOR

INSTALL = "apt-get install chromium chromium-driver"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "explorer"
WAIT = 60  # seconds for one interaction's round trip (toy-icl answers in well under a second; CI is slow)

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra)")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: COLLECTOR's page checks (overlapping annotations, clipped titles, scrolling legends) as a
#: function body for ``execute_script``: the same code, run now instead of on the load event.
_BODY = re.search(r"setTimeout\(\(\) => \{(.*?)const pre = ", COLLECTOR, re.S)
PAGE_CHECKS = None if _BODY is None else _BODY.group(1) + "return out;"


def _binaries() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(f"Chromium and chromedriver are needed: {INSTALL}")
    return browser, driver


@pytest.fixture(scope="module")
def driver():
    browser, chromedriver = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit chromedriver: Selenium Manager never runs (it would download a driver)
    d = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    # a 1400 x 1000 viewport (the window's size would include headless Chromium's frame)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield d
    finally:
        d.quit()


# ----------------------------------------------------------------------------- helpers
def wait(driver, condition, what: str, timeout: float = WAIT):
    """``condition(driver)`` once truthy (its value), failing with ``what`` after ``timeout`` s."""
    def safe(d):
        try:
            return condition(d)
        except StaleElementReferenceException:  # Dash re-rendered the element under us: try again
            return False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(safe)
    except TimeoutException:
        shown = [m.text for m in driver.find_elements(By.CSS_SELECTOR, ".message") if m.text]
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; the page's messages: {shown}; "
                             f"console: {driver.get_log('browser')}") from None


def idle(driver) -> bool:
    """No callback is in flight (Dash marks the outputs it is computing with data-dash-is-loading)."""
    return driver.execute_script(
        "return !document.querySelector('[data-dash-is-loading=\"true\"]') && "
        "document.readyState === 'complete'")


def text(driver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def figure_drawn(driver, graph_id: str, contains: str = "") -> str:
    """The text of graph ``graph_id``'s drawn plot (its SVG) once it has a title containing
    ``contains``, else ''."""
    svg = driver.find_elements(By.CSS_SELECTOR, f"#{graph_id} .js-plotly-plot svg.main-svg")
    if not svg:
        return ""
    title = text(driver, f"#{graph_id} .g-gtitle")
    return title if title and contains in title else ""


def show_tab(driver, label: str) -> None:
    tab = [t for t in driver.find_elements(By.CSS_SELECTOR, "#tabs .tab") if t.text.strip() == label]
    assert tab, f"no tab {label!r}"
    tab[0].click()
    wait(driver, lambda d: "tab--selected" in tab[0].get_attribute("class"), f"tab {label!r} to be selected")


def severe_console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def page_checks(driver) -> dict:
    assert PAGE_CHECKS is not None, "tests/browser.py's COLLECTOR changed shape: update PAGE_CHECKS"
    return driver.execute_script(PAGE_CHECKS)


def screenshot(driver, name: str, top: str | None = None) -> None:
    """docs/explorer/``name``.png of the viewport, at the top of the page or with element ``top`` at
    its top, without a hover label (only with ICL_EXPLORER_SCREENSHOTS=1)."""
    if os.environ.get("ICL_EXPLORER_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    ActionChains(driver).move_to_element_with_offset(driver.find_element(By.TAG_NAME, "h1"), 0, 0).perform()
    if top is None:
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", top)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def check_view(driver, name: str, errors: list[str], top: str | None = None) -> None:
    """After a view is drawn: no console errors, no overlapping annotations, clipped titles or
    scrolling legends (COLLECTOR's checks); its screenshot (scrolled to element ``top``, if given)."""
    wait(driver, idle, f"the {name} view's callbacks to finish")
    errors += [f"{name}: {m}" for m in severe_console_errors(driver)]
    checks = page_checks(driver)
    assert checks["plots"] == checks["rendered"], f"{name}: a plotly figure did not draw: {checks}"
    assert checks["overlapping_annotations"] == [], f"{name}: annotation texts drawn on top of each other"
    assert checks["clipped_titles"] == [], f"{name}: a figure's title is wider than its figure"
    assert checks["legend_scrolls"] == [], f"{name}: a legend needs a scroll bar"
    screenshot(driver, name, top)


def interchangeable_task(ex) -> str:
    """A task other than the first whose default prompt (8 demos, seed 0) has a source task for the
    interventions view (the first, antonym on toy-icl, is the page's initial task)."""
    for task in ex.tasks[1:]:
        if ex.sources(ex.settings(task, 8, 0)):
            return task
    raise AssertionError("no task of the model has an interchangeable prompt at seed 0")


# ----------------------------------------------------------------------------- the walk
def test_every_view_works_in_headless_chromium(explorer_server, driver):
    errors: list[str] = []
    driver.get(explorer_server.url)

    # the prompt: the token strip and the top-5 figure of the first task
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#token-strip button.token")) > 5,
         "the token strip")
    wait(driver, lambda d: figure_drawn(d, "top-tokens", "Top-5"), "the top-tokens figure")
    first_task = text(driver, "#task .dash-dropdown-value")
    before = text(driver, "#token-strip")
    assert first_task == explorer_server.app.explorer.tasks[0] and before

    # another task from the dropdown: a new prompt in the strip and a new figure
    driver.find_element(By.ID, "task").click()
    options = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=listbox] [role=option]"),
                   "the task dropdown's options")
    new_task = interchangeable_task(explorer_server.app.explorer)
    next(o for o in options if o.text.strip() == new_task).click()
    wait(driver, lambda d: text(d, "#task .dash-dropdown-value") == new_task, f"the dropdown to show {new_task}")
    wait(driver, lambda d: text(d, "#token-strip") not in ("", before), "the token strip to change")
    wait(driver, lambda d: figure_drawn(d, "top-tokens", new_task), f"the top-tokens figure of {new_task}")
    assert text(driver, "#prompt-message") == ""
    driver.find_element(By.TAG_NAME, "body").click()  # close the dropdown if it is still open
    check_view(driver, "prompt", errors)

    # attention and saliency
    show_tab(driver, "Attention and saliency")
    wait(driver, lambda d: figure_drawn(d, "attention") and figure_drawn(d, "saliency"),
         "the attention and saliency figures")
    check_view(driver, "attention", errors)

    # interventions: two clicked demo tokens as the position set, then another layer
    show_tab(driver, "Interventions")
    wait(driver, lambda d: text(d, "#int-outcome-text"), "the interchange outcome (all demo tokens)")
    wait(driver, lambda d: figure_drawn(d, "int-curve", "all demo tokens") or figure_drawn(d, "int-curve", "demo_tokens"),
         "the interchange curve")
    tokens = driver.find_elements(By.CSS_SELECTOR, "#token-strip button.token")
    picks = [t for t in tokens if re.search(r"= demo_\d+\.answer\[0\]$", t.get_attribute("title") or "")][:2]
    assert len(picks) == 2, [t.get_attribute("title") for t in tokens]
    for t in picks:
        t.click()
        wait(driver, lambda d, t=t: "selected" in t.get_attribute("class").split(), "a clicked token to be selected")
    names = [t.get_attribute("title").split(" = ")[1] for t in picks]
    driver.find_element(By.CSS_SELECTOR, "#position-set input[value='clicked tokens']").click()
    spec = "+".join(names)
    wait(driver, lambda d: spec in text(d, "#int-outcome-text"), f"the outcome of patching {spec}")
    wait(driver, lambda d: figure_drawn(d, "int-curve", spec), f"the curve of {spec}")
    assert "at layer 0" in text(driver, "#int-outcome-text")
    mark = [m for m in driver.find_elements(By.CSS_SELECTOR, "#int-layer .dash-slider-mark") if m.text == "2"]
    assert mark, "no mark 2 on the layer slider"
    # the mark lies under the slider's root, which takes the pointer and moves to the nearest step
    ActionChains(driver).move_to_element(mark[0]).click().perform()
    wait(driver, lambda d: "at layer 2" in text(d, "#int-outcome-text"), "the outcome at layer 2")
    assert spec in text(driver, "#int-outcome-text") and text(driver, "#int-message") == ""
    wait(driver, lambda d: d.execute_script(  # the curve marks the chosen layer with a dotted line at x = 2
        "const g = document.getElementById('int-curve').querySelector('.js-plotly-plot');"
        "return g && g.layout.shapes && g.layout.shapes.some(s => s.x0 === 2);"), "the curve to mark layer 2")
    check_view(driver, "interventions", errors)

    # heads: click a cell of the grid, get the exact ablation of that head
    show_tab(driver, "Heads")
    wait(driver, lambda d: figure_drawn(d, "heads-grid", "Attribution estimate"), "the heads grid")
    wait(driver, idle, "the heads view")
    drag = driver.find_element(By.CSS_SELECTOR, "#heads-grid .nsewdrag")
    w, h = drag.size["width"], drag.size["height"]
    # offsets from the centre: the cell at 1/4 of the width and 3/4 of the height
    ActionChains(driver).move_to_element_with_offset(drag, -w // 4, h // 4).pause(0.3).click().perform()
    wait(driver, lambda d: text(d, "#head-outcome-text"), "the clicked head's exact ablation")
    assert re.match(r"L\d+H\d+, zero-ablated: ", text(driver, "#head-outcome-text")), text(driver, "#head-outcome-text")
    wait(driver, lambda d: figure_drawn(d, "head-layer"), "the clicked head's layer figure")
    check_view(driver, "heads", errors)

    # lessons: run the first one
    show_tab(driver, "Lessons")
    wait(driver, lambda d: text(d, "#lesson-text"), "the lesson's text")
    driver.find_element(By.ID, "lesson-run").click()
    wait(driver, lambda d: text(d, "#lesson-measured").startswith("Measured here:"), "the lesson's measured numbers")
    wait(driver, lambda d: figure_drawn(d, "lesson-figure"), "the lesson's figure")
    assert text(driver, "#lesson-message") == ""
    check_view(driver, "lessons", errors, top="tabs")

    assert errors == [], "console errors in the page"
