"""The dashboard in a real browser (Debian's headless Chromium driven by selenium), on real servers, a real
``mrq-dashboard`` and real workers.

``MRQ_DASHBOARD_SCREENSHOTS=<folder>`` also saves screenshots of the main pages there (the ones in the
plugin's docs/ are made that way).
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TASKS, DashboardProcess
from mrq.context import get_broker
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue
from mrq.testing import wait_until

pytest.importorskip("selenium", reason="pip install -e 'plugins/mrq_dashboard[test]' (selenium)")
from selenium.common.exceptions import NoAlertPresentException, NoSuchElementException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


@pytest.fixture(autouse=True)
def blank_page(browser):
    """Each test starts on a blank page with an empty console (the previous page stops polling)."""
    browser.get("about:blank")
    browser.get_log("browser")
    yield
    browser.get("about:blank")


def wait_for(what, predicate, timeout=15.0):
    """Poll a browser-side predicate (exceptions count as 'not yet')."""
    def attempt():
        try:
            return predicate()
        except (NoSuchElementException, AssertionError):
            return None
    return wait_until(attempt, timeout=timeout, what=what, poll=0.1)


def text_of(browser, selector):
    return browser.find_element(By.CSS_SELECTOR, selector).text


def open_page(browser, server, path):
    browser.get(server.url + path)
    wait_for(f"{path} rendered", lambda: browser.execute_script("return document.readyState") == "complete")


def no_js_errors(browser):
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors


def test_failed_job_found_from_exceptions_page_then_requeued_after_the_fix(browser, dashboard, dash, tmp_path):
    cause = tmp_path / "cause.txt"
    job = queue_job(TASKS + "NeedsFile", {"path": str(cause)})
    queue_jobs(TASKS + "Add", [{"a": i, "b": 1} for i in range(3)])
    dash.worker("--greenlets", "2")
    wait_until(lambda: Job(job).fetch().status == "failed", what="job failed")

    open_page(browser, dashboard, "/exceptions")
    link = wait_for("exception row", lambda: browser.find_element(By.LINK_TEXT, "FileNotFoundError"))
    link.click()
    row = wait_for("the failed job listed", lambda: browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]'))
    assert "NeedsFile" in row.text and "failed" in row.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]:not(.details)")) == 1
    row.find_element(By.CSS_SELECTOR, "td:nth-child(2) a").click()
    traceback = wait_for("traceback shown", lambda: browser.find_element(By.CSS_SELECTOR, "pre.traceback"))
    assert "FileNotFoundError" in traceback.text and "cause.txt" in traceback.text
    assert "Traceback history (1)" in browser.find_element(By.ID, "job").text

    cause.write_text("fixed")                                          # the cause is fixed...
    browser.find_element(By.CSS_SELECTOR, "button.requeue").click()    # ...and the job requeued from its page
    wait_for("success shown", lambda: browser.find_element(By.CSS_SELECTOR, "dl.fields .status-success"))
    assert Job(job).fetch().data["result"] == "fixed"
    assert "Traceback history (1)" in browser.find_element(By.ID, "job").text   # the failure stays in history
    no_js_errors(browser)


def test_running_job_logs_appear_while_it_runs(browser, dashboard, dash):
    job = queue_job(TASKS + "Chatty", {"lines": 60, "every": 0.25})
    dash.worker()
    open_page(browser, dashboard, f"/jobs/{job}")
    wait_for("first lines", lambda: "line 2 of a chatty job" in text_of(browser, "#logs"))
    assert Job(job).fetch().status == "started"
    seen = text_of(browser, "#logs").count("chatty job")
    wait_for("more lines, live", lambda: text_of(browser, "#logs").count("chatty job") >= seen + 4)
    assert Job(job).fetch().status == "started"                         # still running: streamed, not at the end
    lines = text_of(browser, "#logs").splitlines()
    numbers = [int(line.split("line ")[1].split()[0]) for line in lines if "chatty job" in line]
    assert numbers == list(range(len(numbers)))                         # in order, none twice
    Job(job).cancel()


def test_running_job_cancelled_from_its_page_stops_within_2_s(browser, dashboard, dash):
    job = queue_job(TASKS + "Chatty", {"lines": 1000, "every": 0.1})
    dash.worker()
    open_page(browser, dashboard, f"/jobs/{job}")
    wait_for("started", lambda: browser.find_element(By.CSS_SELECTOR, "dl.fields .status-started"))
    broker = get_broker()
    assert broker.redis.hexists(broker.inflight_key, str(job))
    browser.find_element(By.CSS_SELECTOR, "button.cancel").click()
    # The greenlet is killed: the worker acknowledges the job, which leaves the in-flight record.
    wait_until(lambda: not broker.redis.hexists(broker.inflight_key, str(job)), timeout=2.0, poll=0.02,
               what="the running job stopped")
    assert Job(job).fetch().status == "cancel"
    wait_for("cancel shown", lambda: browser.find_element(By.CSS_SELECTOR, "dl.fields .status-cancel"))
    lines = text_of(browser, "#logs").count("chatty job")
    assert lines < 1000


def test_queue_paused_from_the_queues_page_then_resumed(browser, dashboard, dash):
    first = queue_job(TASKS + "Add", {"a": 1, "b": 1}, queue="pausable")
    dash.worker(queues=("pausable",))
    wait_until(lambda: Job(first).fetch().status == "success", what="first job done")
    open_page(browser, dashboard, "/queues")
    row = wait_for("queue row", lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="pausable"]'))
    row.find_element(By.CSS_SELECTOR, "button.pause").click()
    wait_for("paused shown", lambda: browser.find_element(
        By.CSS_SELECTOR, 'tr[data-queue="pausable"] .status-paused'))
    assert Queue("pausable").is_paused()
    held = queue_job(TASKS + "Add", {"a": 2, "b": 2}, queue="pausable")
    time.sleep(1.5)                                                     # the worker polls every 0.1 s
    assert Job(held).fetch().status == "queued" and Queue("pausable").size() == 1
    browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="pausable"] button.resume').click()
    wait_until(lambda: Job(held).fetch().status == "success", what="dequeued after resume")
    assert not Queue("pausable").is_paused()


def test_bulk_cancel_says_how_many_jobs_before_doing_it(browser, dashboard, dash):
    ids = queue_jobs(TASKS + "Add", [{"a": i, "b": 1} for i in range(7)], queue="bulky")
    other = queue_job(TASKS + "Add", {"a": 1, "b": 1}, queue="other")
    open_page(browser, dashboard, "/jobs?queue=bulky")
    wait_for("rows", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]:not(.details)")) == 7)
    browser.find_element(By.ID, "bulk-cancel").click()
    alert = wait_for("confirmation", lambda: _alert(browser))
    assert "Cancel 7 job(s) matching queue=bulky?" == alert.text
    alert.dismiss()                                                     # refused: nothing happens
    time.sleep(0.3)
    assert {Job(i).fetch().status for i in ids} == {"queued"}
    browser.find_element(By.ID, "bulk-cancel").click()
    wait_for("confirmation again", lambda: _alert(browser)).accept()
    wait_for("result", lambda: "cancelled 7" in text_of(browser, "#bulk-result"))
    assert {Job(i).fetch().status for i in ids} == {"cancel"} and Job(other).fetch().status == "queued"


def _alert(browser):
    try:
        return browser.switch_to.alert
    except NoAlertPresentException:
        return None


def test_job_data_is_shown_as_text_and_executes_nothing(browser, dashboard, dash):
    evil = queue_job(TASKS + "Evil", {"html": XSS, XSS: "key"})
    queue_job("x.<img/src=x/onerror=window.__xss=4>", {"a": XSS}, queue="<img/src=x/onerror=window.__xss=3>")
    dash.worker()
    wait_until(lambda: Job(evil).fetch().status == "failed", what="evil job failed")
    wait_until(lambda: get_broker().redis.hlen(get_broker().inflight_key) == 0, what="logs flushed")
    time.sleep(0.5)
    for path in ("/", "/statuses", "/queues", "/workers", "/jobs", "/taskpaths", "/exceptions", f"/jobs/{evil}"):
        open_page(browser, dashboard, path)
        wait_for(f"{path} filled", lambda: browser.execute_script(
            "return document.querySelectorAll('tbody tr, .card, #job dl').length") > 0)
        if path == "/jobs":
            for toggle in browser.find_elements(By.CSS_SELECTOR, "button.toggle"):
                toggle.click()
            wait_for("inline details", lambda: "log " in browser.find_element(By.CSS_SELECTOR, "pre.logs").text)
        time.sleep(0.3)
        assert browser.execute_script("return window.__xss") is None, path
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == [], path
    page = browser.find_element(By.TAG_NAME, "main").text                # the job page: everything as text
    assert "<script>window.__xss=1</script><img src=x onerror=" in text_of(browser, "pre.params")   # JSON-quoted
    assert "ValueError: " + XSS in text_of(browser, "pre.traceback")
    assert "log " + XSS in text_of(browser, "#logs") and XSS in page
    no_js_errors(browser)


def test_read_only_hides_the_buttons_and_auth_is_required(browser, dashboard_urls, dash):
    queue_job(TASKS + "Add", {"a": 1, "b": 1}, queue="ro")
    server = DashboardProcess(dashboard_urls, ("--dashboard_readonly", "--dashboard_httpauth", "admin:pw"),
                              auth="admin:pw")
    try:
        browser.get(server.url + "/jobs")                                 # no credentials: 401, nothing shown
        assert browser.find_elements(By.ID, "jobs") == [] and "Jobs" not in browser.title
        base = server.url.replace("http://", "http://admin:pw@")
        browser.get(base + "/jobs")
        wait_for("rows", lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]"))
        assert browser.find_elements(By.CSS_SELECTOR, "main button.cancel, main button.requeue") == []
        assert browser.find_elements(By.ID, "bulk") == []
        assert "read-only" in browser.find_element(By.TAG_NAME, "header").text
        browser.get(base + "/queues")
        wait_for("queue row", lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="ro"]'))
        assert browser.find_elements(By.CSS_SELECTOR, "button.pause, button.resume") == []
    finally:
        server.stop()


def test_scheduler_page_appears_with_the_scheduler_plugin(browser, dashboard_urls, dash, tmp_path):
    pytest.importorskip("mrq_scheduler", reason="the scheduler plugin is not installed")
    config = tmp_path / "mrq-config.py"
    config.write_text(textwrap.dedent(f"""
        PLUGINS = ["scheduler"]
        SCHEDULER_TASKS = [{{"path": "{TASKS}Add", "params": {{"a": 1, "b": 2}}, "interval": 3600}},
                           {{"path": "{TASKS}Add", "params": {{"a": 5, "b": 5}}, "dailytime": "03:00"}}]
    """))
    env = {"MRQ_CONFIG": str(config)}
    worker = dash.worker(env=env)
    wait_until(lambda: Job(queue_job(TASKS + "Add", {"a": 0, "b": 0})).wait(timeout=10) == 0, what="worker up")
    server = DashboardProcess(dashboard_urls, env=env)
    try:
        open_page(browser, server, "/")
        browser.find_element(By.LINK_TEXT, "Scheduled jobs").click()
        wait_for("entries", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#plugin-table tbody tr")) == 2)
        table = text_of(browser, "#plugin-table")
        assert "every 3600 s" in table or "3600" in table
        assert "03:00" in table and f"{TASKS}Add" in table
        last = browser.find_element(By.CSS_SELECTOR, "#plugin-table tbody a[href*='/jobs/']")   # the job it queued
        assert last.text
    finally:
        server.stop()
        worker.stop()


@pytest.mark.skipif(not os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"), reason="set MRQ_DASHBOARD_SCREENSHOTS=<dir>")
def test_screenshots(browser, dashboard, dash, tmp_path):
    """Not a check: the screenshots of the plugin's docs (MRQ_DASHBOARD_SCREENSHOTS=plugins/mrq_dashboard/docs)."""
    out = Path(os.environ["MRQ_DASHBOARD_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    queue_jobs(TASKS + "Add", [{"a": i, "b": i} for i in range(300)])
    queue_jobs(TASKS + "NeedsFile", [{"path": str(tmp_path / f"missing-{i}")} for i in range(12)], queue="files")
    queue_jobs(TASKS + "Chatty", [{"lines": 400, "every": 0.5}] * 3, queue="slow")
    queue_jobs(TASKS + "Add", [{"a": i, "b": i} for i in range(40)], queue="later")
    Queue("later").pause()
    dash.worker("--greenlets", "4", queues=("default", "files", "slow"))
    dash.worker("--greenlets", "2", queues=("default",))
    wait_until(lambda: Queue("default").size() == 0, what="default drained", timeout=60)
    time.sleep(2.5)
    browser.set_window_size(1400, 900)
    job = str(queue_jobs(TASKS + "Chatty", [{"lines": 400, "every": 0.3}], queue="slow")[0])
    time.sleep(2)
    for name, path in (("overview", "/"), ("queues", "/queues"), ("workers", "/workers"),
                       ("jobs", "/jobs?status=failing"), ("exceptions", "/exceptions"), ("job", f"/jobs/{job}")):
        open_page(browser, dashboard, path)
        time.sleep(1.5)
        browser.save_screenshot(str(out / f"{name}.png"))


def test_mongodb_unreachable_the_dashboard_starts_at_once_says_why_and_stops_at_the_first_sigint(
        browser, dashboard_urls, tmp_path):
    """A new user's `mrq-dashboard` with nothing on MongoDB's port: it used to take 30 s to listen, answer 500 and
    ignore the first SIGINT."""
    import signal

    from mrq.testing import ServerURLs

    started = time.monotonic()
    server = DashboardProcess(ServerURLs(redis=dashboard_urls.redis, mongodb="mongodb://127.0.0.1:9/mrq"))
    try:
        assert time.monotonic() - started < 10, "the dashboard waited for MongoDB before listening"
        response = server.get("/api/statuses")
        assert response.status == 503 and response.headers["Retry-After"], (response.status, response.text)
        reason = response.json()["error"]
        assert reason.startswith("MongoDB is not reachable at mongodb://127.0.0.1:9/mrq (") and "--embedded" in reason
        open_page(browser, server, "/")
        banner = wait_for("the banner", lambda: browser.find_element(By.ID, "error"))
        wait_for("the reason in the banner", lambda: "MongoDB is not reachable" in banner.text)
        assert banner.is_displayed() and "--mongodb" in banner.text
        browser.save_screenshot(str(tmp_path / "mongodb-down.png"))
        if os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"):
            browser.save_screenshot(os.path.join(os.environ["MRQ_DASHBOARD_SCREENSHOTS"], "mongodb-down.png"))
        stopping = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(10) == 0 and time.monotonic() - stopping < 8
    finally:
        server.stop()


def test_workers_page_a_worker_running_jobs_says_run_and_its_memory_has_a_line(browser, dashboard, dash, tmp_path):
    """A worker running 2 jobs of its 4 greenlets showed `wait`; its memory column and chart, one dot per minute,
    were nearly empty for a worker of a few minutes."""
    queue_jobs(TASKS + "Chatty", [{"lines": 100, "every": 0.2}] * 2)
    dash.worker("--greenlets", "4")
    time.sleep(6)  # a few reports (one a second in the tests)
    browser.set_window_size(1400, 900)
    open_page(browser, dashboard, "/workers")
    row = wait_for("the worker's row", lambda: browser.find_element(By.CSS_SELECTOR, "#workers tbody tr"))
    wait_for("status run", lambda: "run" in row.find_element(By.CSS_SELECTOR, "td:nth-child(5)").text.split())

    def points(selector: str) -> int:
        path = browser.find_element(By.CSS_SELECTOR, selector + " path[data-series]")
        return path.get_attribute("d").count("L") + 1

    assert wait_for("the memory chart's line", lambda: points("#chart-rss") >= 4)
    assert wait_for("the sparkline of the memory column", lambda: points("#workers tbody .spark") >= 4)
    browser.save_screenshot(str(tmp_path / "workers.png"))
    if os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"):
        browser.save_screenshot(os.path.join(os.environ["MRQ_DASHBOARD_SCREENSHOTS"], "workers-running.png"))
    no_js_errors(browser)


def test_plugins_page_shows_what_the_workers_run(browser, dashboard, dash, tmp_path):
    """The dashboard's own process does not run `cleaning`, its workers do: the page said `disabled`."""
    dash.worker("--plugins", "cleaning")
    data = wait_until(lambda: (lambda d: d if d["workers_alive"] else None)(dashboard.api("plugins")),
                      what="a live worker")
    cleaning = next(p for p in data["plugins"] if p["name"] == "cleaning")
    assert cleaning["workers"] == 1 and cleaning["worker_versions"] and not cleaning["enabled"]
    assert next(p for p in data["plugins"] if p["name"] == "dashboard")["workers"] == 0
    browser.set_window_size(1400, 900)
    open_page(browser, dashboard, "/plugins")
    def cleaning_row():
        return next((r for r in browser.find_elements(By.CSS_SELECTOR, "#plugins tbody tr")
                     if r.text.startswith("cleaning")), None)

    row = wait_for("cleaning's row", cleaning_row)
    assert "on 1 of 1 workers" in row.text, row.text
    browser.save_screenshot(str(tmp_path / "plugins.png"))
    if os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"):
        browser.save_screenshot(os.path.join(os.environ["MRQ_DASHBOARD_SCREENSHOTS"], "plugins.png"))
    no_js_errors(browser)


def test_logs_of_a_running_job_follow_until_the_reader_scrolls_up(browser, dashboard, dash, tmp_path):
    """Tail mode: new lines arrive in sight; scrolling up pauses it, scrolling back to the end resumes it."""
    job = queue_job(TASKS + "Chatty", {"lines": 400, "every": 0.05})
    dash.worker()
    browser.set_window_size(1400, 900)
    open_page(browser, dashboard, f"/jobs/{job}")
    follow = wait_for("the follow switch", lambda: browser.find_element(By.ID, "follow-logs"))
    assert follow.is_displayed() and follow.is_selected()

    def gap() -> float:  # pixels between the end of the logs and the bottom of their box
        return browser.execute_script("const b = document.getElementById('logs');"
                                      "return b.scrollHeight - b.scrollTop - b.clientHeight;")

    overflowing = "const b = document.getElementById('logs'); return b.scrollHeight > b.clientHeight + 100;"
    wait_for("the logs overflow their box", lambda: browser.execute_script(overflowing), timeout=30)
    count = text_of(browser, "#logs").count("chatty job")
    wait_for("more lines", lambda: text_of(browser, "#logs").count("chatty job") > count + 5)
    assert gap() < 10  # the newest lines are in sight
    browser.save_screenshot(str(tmp_path / "logs-follow.png"))
    if os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"):
        browser.save_screenshot(os.path.join(os.environ["MRQ_DASHBOARD_SCREENSHOTS"], "logs-follow.png"))
    browser.execute_script("document.getElementById('logs').scrollTop = 0;")
    wait_for("follow paused", lambda: not browser.find_element(By.ID, "follow-logs").is_selected())
    count = text_of(browser, "#logs").count("chatty job")
    wait_for("more lines", lambda: text_of(browser, "#logs").count("chatty job") > count + 5)
    assert browser.execute_script("return document.getElementById('logs').scrollTop;") == 0  # left where it was
    browser.find_element(By.ID, "follow-logs").click()
    wait_for("back at the end", lambda: gap() < 10)
    no_js_errors(browser)
    Job(job).cancel()


def test_an_expanded_stack_stays_expanded_across_refreshes(browser, dashboard, dash):
    queue_job(TASKS + "Chatty", {"lines": 200, "every": 0.2})
    dash.worker()
    open_page(browser, dashboard, "/workers")
    browser.execute_script("localStorage.setItem('mrq-autorefresh', '1');")
    open_page(browser, dashboard, "/workers")
    summary = wait_for("a running job", lambda: browser.find_element(By.CSS_SELECTOR, "details.stack summary"))
    browser.execute_script("arguments[0].click();", summary)  # the summary itself (its text is a link to the job)
    mark = "const d = document.querySelector('details.stack'); if (d) d.dataset.seen = '1'; return !!d;"
    rendered_again = "const d = document.querySelector('details.stack'); return d && !d.dataset.seen;"
    for _ in range(3):  # three refreshes later, still expanded
        assert browser.execute_script(mark)
        wait_for("a refresh", lambda: browser.execute_script(rendered_again), timeout=10)
        again = browser.find_element(By.CSS_SELECTOR, "details.stack")
        assert again.get_attribute("open") is not None
        assert "dashboard_tasks.py" in again.find_element(By.TAG_NAME, "pre").text
    browser.execute_script("localStorage.removeItem('mrq-autorefresh');")
    no_js_errors(browser)


def test_single_job_cancel_and_requeue_say_what_they_did_times_show_their_zone(browser, dashboard, dash, tmp_path):
    job = queue_job(TASKS + "Add", {"a": 1, "b": 2}, queue="nobody")
    browser.set_window_size(1400, 900)
    open_page(browser, dashboard, f"/jobs/{job}")
    wait_for("the cancel button", lambda: browser.find_element(By.CSS_SELECTOR, "button.cancel")).click()
    notice = wait_for("the notice", lambda: browser.find_element(By.ID, "notice"))
    wait_for("cancelled said", lambda: notice.text == f"Cancelled job {str(job)[-8:]}.")
    assert Job(job).fetch().status == "cancel"
    wait_for("the requeue button", lambda: browser.find_element(By.CSS_SELECTOR, "button.requeue")).click()
    wait_for("requeued said", lambda: notice.text == f"Requeued job {str(job)[-8:]}: it waits in its queue.")
    assert Job(job).fetch().status == "queued"
    zone = browser.execute_script("return new Intl.DateTimeFormat('en-US', {timeZoneName: 'short'})"
                                  ".formatToParts(new Date()).find((p) => p.type === 'timeZoneName').value;")
    wait_for("times with their zone", lambda: f" {zone} (" in browser.find_element(By.CSS_SELECTOR, "dl.fields").text)
    separator = "return getComputedStyle(document.getElementById('freshness'), '::before').content;"
    footer = browser.find_element(By.TAG_NAME, "footer").text
    assert footer.endswith("· API") and browser.execute_script(separator) == "none", footer  # nothing dangles
    browser.save_screenshot(str(tmp_path / "job-notice.png"))
    if os.environ.get("MRQ_DASHBOARD_SCREENSHOTS"):
        browser.save_screenshot(os.path.join(os.environ["MRQ_DASHBOARD_SCREENSHOTS"], "job-notice.png"))
    open_page(browser, dashboard, "/jobs")
    wait_for("the jobs list", lambda: browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr[data-job]"))
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#jobs thead th")]
    assert f"Queued ({zone})" in headers and f"Updated ({zone})" in headers, headers
    open_page(browser, dashboard, "/queues")  # a page with counts: the separator comes with them
    wait_for("the counts' age", lambda: "counts computed" in browser.find_element(By.TAG_NAME, "footer").text)
    assert browser.execute_script(separator) == '" · "'  # the separator comes with the text it separates
    no_js_errors(browser)
