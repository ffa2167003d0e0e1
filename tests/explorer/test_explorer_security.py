"""A shared database file is someone else's text, and the explorer is a local server.

In a real browser (Debian's Chromium, as tests/explorer/test_browser.py drives it), a database
whose layer probe, personas, prompts, feature names, explanations, manual labels, label notes and
answers hold images, HTML and URLs renders them as inert text: no element points at those URLs and
a stub server they name receives no request. And the server answers only to the host names this
machine gives itself (loopback, or the address the user asked to bind): a page whose name an
attacker rebinds to 127.0.0.1 gets 403 for its requests and its WebSocket (DNS rebinding)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest
from helpers import copy_db
from test_browser import CHROMIUM, explorer

from shoggoth.index.store.schema import create_grid_tables

PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


class Beacon(ThreadingHTTPServer):
    """A stub HTTP server on 127.0.0.1 that records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        beacon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                beacon.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PIXEL)))
                self.end_headers()
                self.wfile.write(PIXEL)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


def payload(base: str, where: str) -> str:
    """Markup a text value might carry: a markdown image and link, HTML images and a link, and
    URLs and an address that markdown would link by themselves; each names `where`."""
    return (
        f"![b]({base}/img-{where}.png) <img src={base}/html-{where}.png> "
        f"<img src=x onerror=\"fetch('{base}/js-{where}')\"> [l]({base}/md-{where}) "
        f"<a href={base}/a-{where}>a</a> {base}/auto-{where} www.evil.example/{where} "
        f"spy-{where}@evil.example"
    )


@pytest.fixture(scope="module")
def beacon() -> Iterator[Beacon]:
    server = Beacon()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hostile(
    indexed_db: Path, beacon: Beacon, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, int]:
    """A real database (harvested, labelled, indexed) whose text values were then rewritten
    with DuckDB into payloads: the database, its SAE and its busiest feature."""
    db = copy_db(indexed_db, tmp_path_factory.mktemp("hostile") / "db.duckdb")
    p = lambda where: payload(beacon.base, where)  # noqa: E731
    con = duckdb.connect(str(db))
    sae, feature = con.execute(
        "SELECT sae_id, feature FROM features ORDER BY n_docs_firing DESC LIMIT 1"
    ).fetchone()
    # The layer probe, its layer a text column.
    con.execute(
        "CREATE TABLE layer_probe (sae_id VARCHAR, layer VARCHAR, hook VARCHAR, "
        "n_documents INTEGER, n_personas INTEGER, n_items INTEGER, chance DOUBLE, "
        "probe_accuracy DOUBLE, persona_norm_mean DOUBLE, persona_norm_max DOUBLE, "
        "sae_signal_fraction DOUBLE, probe_on_reconstruction DOUBLE, "
        "probe_on_error DOUBLE, is_sae_layer BOOLEAN)"
    )
    con.execute(
        "INSERT INTO layer_probe SELECT sae_id, ?, hook, 10, 3, 5, 0.33, 0.9, 0.1, 0.2, "
        "0.5, 0.8, 0.4, true FROM saes",
        [p("layer")],
    )
    # Personas, prompts, feature names, an explanation, a manual label.
    con.execute(
        "UPDATE personas SET description = ?, family = ? WHERE persona = 'pirate'",
        [p("description"), p("family")],
    )
    con.execute(
        "UPDATE personas SET control_of = ? WHERE persona = 'control_none'", [p("control-of")]
    )
    con.execute("UPDATE persona_prompts SET prompt = ? WHERE persona = 'pirate'", [p("prompt")])
    con.execute("UPDATE feature_handles SET handle = ?", [p("handle")])
    con.execute("DELETE FROM feature_explanations WHERE sae_id = ? AND feature = ?", [sae, feature])
    con.execute(
        "INSERT INTO feature_explanations VALUES (?, ?, ?, ?, 'scorer', 0.7, 10, [], "
        "0.6, 10, [], 5, '{}', now())",
        [sae, feature, p("explanation"), p("explainer")],
    )
    con.execute(
        "INSERT INTO annotations (sae_id, feature, label, note, author) VALUES (?, ?, ?, ?, ?)",
        [sae, feature, p("label"), p("note"), p("author")],
    )
    # The label run's notes (the overview's warnings).
    run_id, config = con.execute(
        "SELECT run_id, config_json FROM runs WHERE command = 'label' "
        "ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    config = json.loads(config)
    config.setdefault("config", {})["notes"] = [p("notes")]
    con.execute("UPDATE runs SET config_json = ? WHERE run_id = ?", [json.dumps(config), run_id])
    # The model's own answers and a grid run (the personas page).
    create_grid_tables(con)
    item = con.execute("SELECT item_id::VARCHAR FROM items LIMIT 1").fetchone()[0]
    con.execute(
        "INSERT INTO answer_sets VALUES ('set1', ?, 't', 20, 0.0, 0, 'r', 'finished')", [p("model")]
    )
    con.execute(
        "INSERT INTO answers VALUES ('set1', 'pirate', 0, ?, ?, 5, ?)",
        [item, p("answer"), p("stop")],
    )
    con.execute(
        "INSERT INTO grid_fdr VALUES (?, 'set1', ?, 'context', 1, 0.0, 0.0)", [sae, p("neutral")]
    )
    con.close()
    return db, sae, int(feature)


@pytest.fixture(scope="module")
def hostile_server(hostile: tuple[Path, str, int]) -> Iterator[str]:
    with explorer(hostile[0]) as url:
        yield url


URLS = """els => els.flatMap(e => [...e.attributes]
    .filter(a => /^(href|src|srcset|action|formaction|data|poster|xlink:href|style)$/.test(a.name))
    .map(a => `<${e.tagName} ${a.name}="${a.value}">`))"""
"""Every attribute of the page that the browser may fetch or follow, with its element."""


def test_database_text_is_inert_in_a_real_browser(hostile, hostile_server, beacon):
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    _, sae, feature = hostile
    pages = [
        ("", "Most frequent shared features", ["layer", "notes", "handle"]),
        (
            f"feature?sae={sae}&feature={feature}",
            "Manual label",
            ["explanation", "explainer", "label", "note", "handle"],
        ),
        (
            "personas?persona=pirate",
            "Features its own words change",
            ["description", "family", "prompt", "model", "stop", "neutral"],
        ),
        ("personas?persona=control_none", "Features its own words change", ["control-of"]),
        ("features", "Download CSV", []),
        ("map", "Feature map", []),
    ]
    leaks: list[tuple[str, str]] = []  # (page, element and URL attribute)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, last, shown in pages:
            page.goto(f"{hostile_server}/{path}")
            expect(page.get_by_text(last).first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(2000)  # the rest of the run, images and charts
            assert page.get_by_text("Traceback").count() == 0, path
            urls = page.eval_on_selector_all("*", URLS)
            leaks += [
                (path, u) for u in urls if "evil.example" in u or f":{beacon.server_port}" in u
            ]
            body = page.inner_text("body")
            for where in shown:  # each value is still there, as text
                assert f"/auto-{where}" in body and f"spy-{where}" in body, (path, where)
        page.wait_for_timeout(1000)
        browser.close()
    assert not leaks and not beacon.requests, (leaks, beacon.requests)


def request(url: str, host: str, websocket: bool = False) -> int:
    """The status line's code of a raw GET of `url` sent with `Host: host` (and, for a
    WebSocket upgrade, the Origin a browser on that host would send)."""
    parts = urlsplit(url)
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if websocket:
        lines = [
            *lines[:2],
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol: streamlit",
            f"Origin: http://{host}",
        ]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = s.recv(4096).split(b"\r\n", 1)[0].decode()
    return int(head.split()[1])


def test_only_this_machines_host_names_are_served(hostile_server):
    port = urlsplit(hostile_server).port
    for host, status, upgrade in (
        (f"127.0.0.1:{port}", 200, 101),
        (f"localhost:{port}", 200, 101),
        ("localhost", 200, 101),
        (f"127.0.0.2:{port}", 200, 101),
        (f"[::1]:{port}", 200, 101),
        (f"evil.example:{port}", 403, 403),
        ("evil.example", 403, 403),
        (f"localhost.evil.example:{port}", 403, 403),
        (f"127.0.0.1.evil.example:{port}", 403, 403),
    ):
        assert request(f"{hostile_server}/", host) == status, host
        assert request(f"{hostile_server}/_stcore/health", host) == status, host
        assert request(f"{hostile_server}/_stcore/stream", host, websocket=True) == upgrade, host


def test_the_host_names_each_bind_address_allows():
    from shoggoth.explorer.launch import host_allowed

    for header in (
        "127.0.0.1:8501",
        "localhost",
        "LocalHost.:8501",
        "127.3.2.1",
        "[::1]:8501",
        "[::ffff:127.0.0.1]:8501",
    ):
        assert host_allowed(header, "127.0.0.1"), header
    for header in (
        "evil.example:8501",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "10.0.0.5:8501",
        "",
        "[::1",
    ):
        assert not host_allowed(header, "127.0.0.1"), header
    assert host_allowed("10.0.0.5:8501", "10.0.0.5")  # --host: the address asked for
    assert host_allowed("box.lan:8501", "box.lan") and not host_allowed("evil.example", "box.lan")
    assert host_allowed("[2001:db8::1]:8501", "2001:DB8:0::1")
    for header in ("10.0.0.5:8501", "[2001:db8::1]:8501", f"{socket.gethostname()}:8501"):
        assert host_allowed(header, "0.0.0.0"), header  # every interface: its addresses
    assert not host_allowed("evil.example:8501", "0.0.0.0")
