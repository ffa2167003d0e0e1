"""A real browser against a real `shoggoth explore`: headless Chromium (Debian's package, driven
by Playwright) loads the overview, follows a feature link to its page, visits every page, and
saves screenshots. SHOGGOTH_SCREENSHOTS=DIR keeps them there (docs/ holds the README's)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import copy_db

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEURONPEDIA_ID = "gpt2-small/8-res-jb"
"""The Neuronpedia id the test gives the fixture's SAE."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_PID: dict[str, int] = {}
"""The Streamlit process behind each `server` URL."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def explorer(db: Path, *flags: str) -> Iterator[str]:
    """`shoggoth explore --db DB FLAGS` on a free port, until the block ends: its URL (on
    127.0.0.1) once it answers; it leaves no process behind."""
    port = free_port()
    exe = Path(sys.executable).with_name("shoggoth")
    proc = subprocess.Popen(
        [str(exe), "explore", "--db", str(db), "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the explorer did not start in 90 s"
        time.sleep(0.3)
    server = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(server) == 1  # the Streamlit process
    SERVER_PID[url] = int(server[0])
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # The explorer leaves no process behind: the server went down with `shoggoth explore`.
    deadline = time.time() + 20
    while Path(f"/proc/{server[0]}").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{server[0]}").exists(), "the Streamlit server outlived its parent"


@pytest.fixture()
def server(indexed_db, tmp_path):
    db = (
        Path(os.environ.get("SHOGGOTH_BROWSER_DB", ""))
        if os.environ.get("SHOGGOTH_BROWSER_DB")
        else tmp_path / "browser.duckdb"
    )
    if not db.exists():
        copy_db(indexed_db, db)
        import duckdb

        with duckdb.connect(str(db)) as con:  # as `sae import --release` records it
            con.execute("UPDATE saes SET neuronpedia_id = ?", [NEURONPEDIA_ID])
    with explorer(db) as url:
        yield url


def test_explorer_in_a_real_browser(server, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("SHOGGOTH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        expect(page.get_by_role("heading", name="shoggoth · overview")).to_be_visible(
            timeout=60_000
        )
        expect(page.get_by_text("Most active features")).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)  # charts finish drawing
        page.screenshot(path=str(shots / "explorer-overview.png"), full_page=False)
        link = page.get_by_role("link", name=re.compile(r"^feature \d+")).first
        feature = int(re.match(r"feature (\d+)", link.inner_text()).group(1))
        link.click()
        expect(page.get_by_role("heading", name=f"Feature {feature} ·")).to_be_visible(
            timeout=60_000
        )
        assert f"feature={feature}" in page.url
        expect(page.get_by_text("Mean activation per persona")).to_be_visible(timeout=30_000)
        neuronpedia = page.get_by_role("link", name="This feature on Neuronpedia")
        expect(neuronpedia).to_have_attribute(
            "href", f"https://neuronpedia.org/{NEURONPEDIA_ID}/{feature}"
        )
        page.wait_for_timeout(1500)  # charts finish drawing
        page.screenshot(path=str(shots / "explorer-feature.png"), full_page=False)
        for path, heading in (
            ("features", "Features"),
            ("personas", "Personas"),
            ("search", "Search"),
            ("sql", "SQL"),
            ("map", "Feature map"),
        ):
            page.goto(f"{server}/{path}")
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(
                timeout=60_000
            )
            assert page.get_by_text("Traceback").count() == 0, path
        browser.close()
    assert (shots / "explorer-feature.png").stat().st_size > 10_000


HEAVY = (
    "SELECT count(*) FROM range(1000000) a, range(1000000) b "
    "WHERE (a.range * 7 + b.range) % 1000003 = 5"
)
"""10^12 rows: it would run until the SQL page's 30 s timeout."""


def test_closing_the_tab_cancels_its_query(server):
    """A query started from the SQL page stops when its browser tab closes, instead of keeping
    both cores busy for nobody until the timeout."""
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    pid = SERVER_PID[server]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{server}/sql")
        expect(page.get_by_role("heading", name="SQL", exact=True)).to_be_visible(timeout=60_000)
        page.get_by_label("query").fill(HEAVY)
        page.get_by_role("button", name="Run").click()
        page.wait_for_timeout(3000)
        busy = cpu_seconds(pid)
        page.wait_for_timeout(2000)
        running = cpu_seconds(pid) - busy  # CPU seconds in 2 s while the query runs
        assert running > 0.5  # it is running
        browser.close()
    time.sleep(2)  # the server sees the socket close and interrupts DuckDB
    idle = cpu_seconds(pid)
    time.sleep(2)
    after = cpu_seconds(pid) - idle  # CPU seconds in 2 s after the tab closed
    # (two rates measured in this run: stopped means a small fraction of the running one)
    assert after < running / 5, (
        f"the query kept running after its tab closed ({after:.2f} "
        f"CPU s in 2 s, against {running:.2f} while it ran)"
    )
