"""The dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which .ci/run installs) driven by Selenium, against the
dashboard served by uvicorn, a JetStream server and in-process worker nodes.

The server, the nodes and the dashboard share one event loop in a thread of
their own (an anyio blocking portal), so the browser's blocking calls never
stall them. The last test saves a screenshot of every page, at 1440x900, into
docs/screenshots/ (or ``$NATSKIQ_SCREENSHOTS``), which the dashboard guide (docs/guides/dashboard.md) shows.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest

import natskiq
from natskiq import api, testing
from natskiq.enqueue import cron
from natskiq.web import create_app, serve_app

from .conftest import ROOT, read_ledger, running_node
from .sample_workers import FixedByFile, Record

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium not found: apt-get install chromium chromium-driver (.ci/run does when it can)",
)
SIZE = (1440, 900)
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={SIZE[0]},{SIZE[1]}",
]


# Workers with a shop's names, so the screenshots look like an application's.
class SendReceipt(natskiq.Worker, queue="mailers", name="shop.SendReceipt"):
    async def perform(self, order_id: int, email: str) -> None:
        pass


class ChargeCard(natskiq.Worker, retries=5, name="shop.ChargeCard"):
    async def perform(self, order_id: int, amount_cents: int) -> None:
        raise ConnectionError("payment gateway timed out after 10s")


class ImportCatalog(natskiq.Worker, retries=0, backtrace=True, name="shop.ImportCatalog"):
    async def perform(self, url: str, options: dict[str, Any]) -> None:
        raise KeyError("sku")


class RebuildIndex(natskiq.Worker, name="shop.RebuildIndex"):
    async def perform(self, index: str) -> None:
        await anyio.sleep(60)


class ResizePhotos(natskiq.Worker, keep_result=3600, retries=3, name="shop.ResizePhotos"):
    """Reports its progress; its first run fails (the photo store times out), its retry succeeds."""

    async def perform(self, album: str, photos: int) -> dict[str, Any]:
        for done in range(1, photos + 1):
            await self.progress(done / photos, f"resized {done} of {photos} photos")
            await anyio.sleep(0.55)  # reports closer than 0.5 s apart are dropped
            if self.job.retry_count is None and done == 2:
                raise TimeoutError("the photo store did not answer within 5s")
        thumbnails = [f"{album}/{n:03}-320w.jpg" for n in range(1, photos + 1)]
        return {"album": album, "width": 320, "thumbnails": thumbnails}

    def retry_in(self, count: int, exc: Exception) -> float:
        return 1.0


@attrs.define
class Live:
    """The dashboard's URL, and a way to run coroutines in its event loop."""

    portal: anyio.from_thread.BlockingPortal
    client: natskiq.Client
    url: str
    ledger: Path

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(functools.partial(func, *args, **kwargs))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Dashboard (polling every 0.5 s), client and two worker nodes, in one portal thread.

    On a server of their own: late in a run the session's holds more than 256
    streams, and api.queue_names reads only the first page of the stream list.
    """
    namespace = testing.unique_namespace()
    ledger = tmp_path_factory.mktemp("web") / "ledger.txt"
    ledger.touch()
    with (
        testing.server() as nats_server,
        pytest.MonkeyPatch.context() as mp,
        anyio.from_thread.start_blocking_portal() as portal,
        contextlib.ExitStack() as stack,
    ):
        mp.setenv("NATSKIQ_TEST_LEDGER", str(ledger))
        client = portal.call(natskiq.connect(nats_server.url, namespace=namespace).open)
        stack.callback(portal.call, client.close)
        app = create_app(client, poll_interval=0.5)
        future, url = portal.start_task(functools.partial(serve_app, app, port=0))
        stack.callback(future.cancel)
        for node_id in ("web-1", "web-2"):
            node = running_node(
                nats_server.url,
                namespace,
                node_id=node_id,
                queues=("critical:2", "default", "mailers"),
                timeout=0.2,
            )
            stack.enter_context(portal.wrap_async_context_manager(node))
        yield Live(portal, client, url, ledger)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium at 1440x900, with a profile of its own."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="natskiq-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            # The window's size includes whatever frame headless Chrome emulates: fix the viewport itself.
            metrics = {"width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()


def wait(driver: Any, check: Callable[[Any], Any], timeout: float = 20) -> Any:
    """Wait for an outcome in the page (not for time)."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)


def stat(driver: Any, key: str) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, f"[data-stat={key}]").text.replace(",", ""))


def runs(ledger: Path, jid: str) -> int:
    return sum(1 for row in read_ledger(ledger) if row.jid == jid)


def test_dashboard_counts_change_after_jobs_run(live: Live, browser: Any) -> None:
    """The dashboard's processed count and throughput chart update by themselves as jobs run."""
    browser.get(live.url)
    assert browser.title == "Dashboard · natskiq"
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-updated"))
    before = stat(browser, "processed")
    live.run(Record.perform_bulk, [[0.0, i] for i in range(20)])
    wait(browser, lambda d: stat(d, "processed") >= before + 20)
    assert len([row for row in read_ledger(live.ledger) if isinstance(row.note, int)]) >= 20
    # Two samples make a rate: the chart draws a line, and the rate shows as a number.
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg[data-chart=processed] polyline"))
    assert browser.find_element(By.CSS_SELECTOR, "[data-rate=processed]").text != "–"
    assert "offline" not in (browser.find_element(By.TAG_NAME, "body").get_attribute("class") or "")


def test_replay_a_failed_job_by_clicking(live: Live, browser: Any, tmp_path: Path) -> None:
    """A failed job's Replay button puts it back in its queue, and a node runs it."""
    fixed = tmp_path / "fixed"
    jid = live.run(FixedByFile.set(retries=0).perform_async, str(fixed))
    browser.get(live.url + "failed")
    wait(browser, lambda d: _refreshed_until(d, jid))
    assert runs(live.ledger, jid) == 1
    fixed.touch()  # the bug is fixed: the next run succeeds
    button = browser.find_element(
        By.XPATH, f"//tr[.//small[@class='jid' and text()='{jid}']]//button[starts-with(@value, 'replay:')]"
    )
    button.click()
    wait(browser, lambda d: "Replayed 1 job(s)" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    wait(browser, lambda _: runs(live.ledger, jid) == 2)  # it ran again, and succeeded
    assert jid not in browser.find_element(By.TAG_NAME, "main").text
    assert [e.jid for e in live.run(api.find, live.client, "failed", api.Filter(jid=jid))] == []


def _refreshed_until(driver: Any, jid: str) -> bool:
    if jid in driver.find_element(By.TAG_NAME, "main").text:
        return True
    driver.refresh()
    return False


def test_html_in_an_argument_renders_as_text(live: Live, browser: Any) -> None:
    """An argument holding HTML and script shows as that text; nothing of it runs or renders."""
    jid = live.run(Record.set(queue="inbox").perform_async, note=HOSTILE)
    live.run(Record.set(queue="inbox").perform_async, note=HOSTILE * 5)
    browser.get(live.url + "queues/inbox")
    row = browser.find_element(By.XPATH, f"//tr[.//small[text()='{jid}']]")
    assert row.find_element(By.CSS_SELECTOR, "code.args").text == f'note="{HOSTILE}"'
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    # The long one is cut short; "show all" opens it, still as text.
    browser.find_element(By.CSS_SELECTOR, "details.args summary").click()
    assert HOSTILE * 5 in browser.find_element(By.CSS_SELECTOR, "details.args pre").text
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check


def test_bulk_delete_asks_first(live: Live, browser: Any) -> None:
    """ "Select all" then "Delete selected" asks for confirmation; cancelled, nothing goes."""
    for n in range(3):
        live.run(Record.set(queue="trash").perform_async, note=n)
    browser.get(live.url + "queues/trash")
    browser.find_element(By.CSS_SELECTOR, "input[data-select-all]").click()
    assert all(box.is_selected() for box in browser.find_elements(By.CSS_SELECTOR, "input[name=item]"))
    delete = browser.find_element(By.XPATH, "//button[@value='delete' and @data-needs-selection]")
    delete.click()
    wait(browser, lambda d: d.switch_to.alert).dismiss()
    assert len(live.run(api.find, live.client, "queued", api.Filter(queue="trash"))) == 3
    browser.find_element(By.XPATH, "//button[@value='delete' and @data-needs-selection]").click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: "Deleted 3 job(s)" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    assert live.run(api.find, live.client, "queued", api.Filter(queue="trash")) == []


def test_a_jid_opens_its_job_page(live: Live, browser: Any) -> None:
    """A jid in a list links to its job's page; the header's box finds a job by jid, and says
    when what was typed is not one."""
    from selenium.webdriver.common.keys import Keys

    jid = live.run(SendReceipt.perform_in, 7200, 4100, "linus@example.com")
    try:
        browser.get(live.url + "scheduled")
        browser.find_element(By.LINK_TEXT, jid).click()
        wait(browser, lambda d: d.title == f"Job {jid} · natskiq")
        facts = browser.find_element(By.CSS_SELECTOR, "table.job").text
        assert "scheduled" in facts and "shop.SendReceipt" in facts and "mailers" in facts
        browser.get(live.url)
        browser.find_element(By.CSS_SELECTOR, "form.find input[name=jid]").send_keys(jid, Keys.ENTER)
        wait(browser, lambda d: d.title == f"Job {jid} · natskiq")
        browser.find_element(By.CSS_SELECTOR, "form.find input[name=jid]").send_keys(
            "no such job", Keys.ENTER
        )
        wait(browser, lambda d: d.title == "Error 400 · natskiq")
        assert "is not a jid" in browser.find_element(By.CSS_SELECTOR, ".flash.error").text
    finally:
        live.run(api.cancel, live.client, jid)


def test_screenshots_of_every_page(live: Live, browser: Any) -> None:
    """Each page, filled with jobs, renders in Chromium; saved at 1440x900 for the dashboard guide."""
    folder = Path(os.environ.get("NATSKIQ_SCREENSHOTS") or ROOT / "docs" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    photos = live.run(ResizePhotos.perform_async, "spring-sale", 4)
    receipts = live.run(_receipts_batch, live.client)
    _fill(live)
    browser.get(live.url)
    wait(browser, lambda d: stat(d, "busy") >= 2 and stat(d, "retries") >= 2 and stat(d, "dead") >= 2)
    for wave in range(14):  # a few seconds of rising traffic for the charts
        live.run(
            SendReceipt.perform_bulk,
            [[1000 + wave * 100 + i, "ada@example.com"] for i in range(5 + 5 * wave)],
        )
        if wave % 4 == 3:
            live.run(ChargeCard.perform_async, 2000 + wave, 4999)
        seen = browser.find_element(By.TAG_NAME, "body").get_attribute("data-updated")
        wait(
            browser,
            lambda d, seen=seen: d.find_element(By.TAG_NAME, "body").get_attribute("data-updated") != seen,
        )
    pages = {
        "dashboard": "",
        "busy": "busy",
        "queues": "queues",
        "queue": "queues/inbox",
        "scheduled": "scheduled",
        "retries": "retries",
        "failed": "failed",
        "periodic": "periodic",
        "job": f"jobs/{photos}",
        "batches": "batches",
        "batch": f"batches/{receipts}",
    }
    assert live.run(photos.wait, 30).state == "succeeded"
    for name, path in pages.items():
        if path:
            browser.get(live.url + path)
        wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")
        assert "Error" not in browser.title, browser.title
        assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == list(SIZE)
        browser.save_screenshot(str(folder / f"{name}.png"))
        assert (folder / f"{name}.png").stat().st_size > 10_000


async def _receipts_batch(client: natskiq.Client) -> str:
    """A batch of receipts (shown on the batch pages); returns its id."""
    async with natskiq.batch("spring-sale receipts", client=client) as batch:
        await SendReceipt.set(client=client).perform_bulk([[3000 + i, "ada@example.com"] for i in range(40)])
    return batch.bid


def _fill(live: Live) -> None:
    """Jobs of every kind, as a shop's dashboard would show them."""
    client = live.client
    for index in ("products", "orders"):
        live.run(RebuildIndex.perform_async, index)
    for n in range(3):
        live.run(ChargeCard.perform_async, 1042 + n, 1999 + 1000 * n)
    live.run(ImportCatalog.perform_async, "https://example.com/feeds/catalog.csv", {"dry_run": False})
    live.run(
        ImportCatalog.perform_async, "https://example.com/feeds/spring.csv", {"columns": list(range(40))}
    )
    for n, delay in enumerate((90, 600, 3600, 86400)):
        live.run(SendReceipt.perform_in, delay, 3000 + n, f"customer{n}@example.com")
    live.run(SendReceipt.set(queue="inbox").perform_async, 77, "grace@example.com")
    nightly = cron.normalize("0 3 * * *")
    definitions = [
        cron.Periodic(
            name="nightly-report", schedule=nightly, worker="shop.Report", queue="default", retry=3,
            args=["sales"], tz="Europe/Paris",
        ),
        cron.Periodic(
            name="heartbeat", schedule="@every 30s", worker="shop.Heartbeat", queue="default", retry=0
        ),
    ]  # fmt: skip
    live.run(cron.register, client.js, client.names, definitions)
    started = time.time()
    live.run(_until_settled, client, started)


async def _until_settled(client: natskiq.Client, started: float) -> None:
    """Until the failing jobs have failed once and the long ones are running."""
    with anyio.fail_after(20):
        while True:
            retries = await api.find(client, "retry", api.Filter(cls="shop.ChargeCard"))
            failed = await api.find(client, "failed", api.Filter(cls="shop.ImportCatalog"))
            if len(retries) >= 3 and len(failed) >= 2:
                return
            await anyio.sleep(0.05)
