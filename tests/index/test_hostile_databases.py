"""Reliability round 4: a database is data. A hostile-database corpus, built here from a real
harvested and labelled database with nothing but DuckDB (what anyone holding a shared file can
do): names with quotes, semicolons, `..`, slashes and control characters in the tables and
columns shoggoth reads, views and macros that read files or replace DuckDB's functions, wrong
types, absurd sizes, missing tables. Every command that opens a database runs over every member:
one `error:` line (exit 2) or a correct result (exit 0); nothing written outside its output; no
file outside the database read; nothing the names say executed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from helpers import copy_db, snapshot

from shoggoth import cli

SECRET = "shoggoth-canary-7d1f"
"""The content of a file beside the corpus that no command may read."""


def _sql(db: Path, *statements: str) -> None:
    con = duckdb.connect(str(db))
    for statement in statements:
        con.execute(statement)
    con.close()


def _rename_sae(db: Path, new: str) -> None:
    con = duckdb.connect(str(db))
    for (table,) in con.execute(
        "SELECT DISTINCT c.table_name FROM duckdb_columns() c JOIN duckdb_tables() t "
        "USING (database_name, schema_name, table_name) WHERE c.column_name = 'sae_id' "
        "AND c.database_name = current_database()"
    ).fetchall():
        con.execute(f'UPDATE "{table}" SET sae_id = ?', [new])
    con.close()


def _retype(db: Path, table: str, column: str, value: str) -> None:
    """`table.column` turned into text holding `value` (a damaged file)."""
    _sql(
        db,
        f'ALTER TABLE {table} ALTER "{column}" SET DATA TYPE VARCHAR',
        f"UPDATE {table} SET \"{column}\" = '{value}'",
    )


def corpus(where: Path, base: Path) -> dict[str, Callable[[Path], None]]:
    """Name → how that member is made from a copy of `base`. `where` holds the canary files."""
    secret, pwned = where / "secret.txt", where / "pwned.txt"
    inject = f"COPY (SELECT 'pwned') TO '{pwned}' (HEADER false)"
    return {
        "table name closing its quote": lambda db: _sql(
            db, f'CREATE TABLE "x""; {inject.replace(chr(34), chr(34) * 2)}; --" (a INTEGER)'
        ),
        "table name with a slash and ..": lambda db: _sql(db, 'CREATE TABLE "../../x" (a INTEGER)'),
        "column name closing its quote": lambda db: _sql(
            db,
            f'ALTER TABLE saes ADD COLUMN "y""); {inject.replace(chr(34), chr(34) * 2)}; --" '
            "INTEGER",
        ),
        "sae id ../*": lambda db: _rename_sae(db, "../*"),
        "sae id ../victim": lambda db: _rename_sae(db, "../victim"),
        "sae id with control characters": lambda db: _rename_sae(db, "a\n\x1b[31mb"),
        "view reading a file": lambda db: _sql(
            db,
            f"CREATE OR REPLACE VIEW feature_names AS SELECT content AS handle FROM "
            f"read_text('{secret}')",
        ),
        "view in place of a table": lambda db: _sql(
            db,
            "DROP TABLE features",
            f"CREATE VIEW features AS SELECT content, 0 AS feature FROM read_text('{secret}')",
        ),
        "macro replacing a function": lambda db: _sql(
            db, f"CREATE MACRO lower(x) AS (SELECT content FROM read_text('{secret}'))"
        ),
        "table macro reading a file": lambda db: _sql(
            db,
            f"CREATE OR REPLACE MACRO example_contexts(a, b) AS TABLE SELECT content FROM "
            f"read_text('{secret}')",
        ),
        "d_sae as text": lambda db: _retype(db, "saes", "d_sae", "many"),
        "d_sae absurd": lambda db: _sql(db, "UPDATE saes SET d_sae = 2000000000"),
        "d_sae against its weights": lambda db: _sql(db, "UPDATE saes SET d_sae = 4096"),
        "activation values as text": lambda db: _retype(db, "activations", "value", "high"),
        "unknown hook": lambda db: _sql(db, "UPDATE saes SET hook = 'blocks.99.nothing'"),
        "missing table": lambda db: _sql(db, "DROP TABLE doc_features"),
        "no saes rows": lambda db: _sql(db, "DELETE FROM saes"),
        "empty file": lambda db: (db.unlink(), duckdb.connect(str(db)).close()),
        "not a database": lambda db: db.write_text("not a database\n"),
    }


def commands(db: Path, out: Path, other: Path) -> dict[str, list[str]]:
    """Every command that opens a database, with `db` as its database (`out`: a fresh output
    path; `other`: a good database to merge beside `db`)."""
    d = str(db)
    return {
        "status": ["status", "--db", d],
        "sql": ["sql", "--db", d, "SELECT count(*) FROM saes"],
        "sql names": ["sql", "--db", d, "SELECT * FROM feature_names LIMIT 3"],
        "search name": ["search", "name", "--db", d, "a"],
        "search feature": ["search", "feature", "--db", d, "--feature", "1"],
        "search similar": ["search", "similar", "--db", d, "--feature", "1"],
        "search text": ["search", "text", "--db", d, "rain falls"],
        "label": ["label", "--db", d, "--min-docs", "5", "--calibration-seeds", "1"],
        "index": ["index", "--db", d],
        "export": ["export", "--db", d, "--parquet", str(out)],
        "merge (as input)": ["merge", "--db", str(out.with_suffix(".duckdb")), str(other), d],
        "layers": ["layers", "--db", d],
        "effects": ["effects", "--db", d, "--top", "2", "--bootstrap", "10"],
        "explain": ["explain", "--db", d, "--features", "1"],
    }


def outside(folder: Path, db: Path, out: Path) -> dict[str, tuple[int, int]]:
    """The files under `folder` but the command's own outputs (the database, its WAL, its
    FAISS folder, `out`) and the databases of the corpus themselves."""
    mine = (db.name, out.name, out.with_suffix(".duckdb").name)
    return {
        k: v if (folder / k).is_file() else (0, 0)
        for k, v in snapshot(folder).items()
        if not any(part.startswith(mine) for part in Path(k).parts)
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, indexed_db) -> tuple[Path, dict[str, Path]]:
    """The corpus, made once: member name → its database (each in a folder of its own)."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_text(SECRET)
    members = {}
    for n, (name, make) in enumerate(corpus(root, indexed_db).items()):
        folder = root / f"m{n:02d}"
        folder.mkdir()
        db = copy_db(indexed_db, folder / "db.duckdb")
        make(db)
        members[name] = db
    return root, members


def run_one(capfd, argv: list[str]) -> tuple[int, str, str]:
    capfd.readouterr()
    code = cli.main(argv)
    got = capfd.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize("command", list(commands(Path("x"), Path("y"), Path("z"))))
def test_every_command_over_every_hostile_database(capfd, hostile, indexed_db, command):
    root, members = hostile
    failures = []
    for name, db in members.items():
        out = db.parent / f"out-{command.split()[0]}"
        argv = commands(db, out, indexed_db)[command]
        before_db = db.read_bytes() if db.is_file() else None
        before = outside(root, db, out)
        code, stdout, stderr = run_one(capfd, argv)
        problem = None
        if code not in (0, 2):
            problem = f"exit {code}"
        elif "Traceback" in stderr:
            problem = "a traceback"
        elif code == 2 and not (stderr.strip().splitlines() or [""])[-1].startswith("error: "):
            problem = "no error line"
        elif code == 2 and sum(line.startswith("error:") for line in stderr.splitlines()) != 1:
            problem = "more than one error line"
        elif SECRET in stdout or SECRET in stderr:
            problem = "read the canary file"
        elif (root / "pwned.txt").exists():
            problem = "ran the SQL a name holds"
        elif outside(root, db, out) != before:
            problem = "wrote outside its output"
        elif code == 2 and before_db is not None and db.read_bytes() != before_db:
            problem = "changed the database and failed"
        if problem:
            failures.append(f"{name}: {problem}: {stderr.strip()[-300:]}")
        for leftover in (out, out.with_suffix(".duckdb")):
            if leftover.is_dir():
                import shutil

                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    assert not failures, "\n".join(failures)


def test_the_corpus_is_hostile(tmp_path, indexed_db):
    """Each member really holds what it is named for (a member that a DuckDB change made
    harmless would let every other test pass for nothing). Made afresh: the commands run over
    the shared corpus rewrite shoggoth's own views in the members they label or index."""
    (tmp_path / "secret.txt").write_text(SECRET)
    members = {}
    for name, make in corpus(tmp_path, indexed_db).items():
        if name in (
            "table name closing its quote",
            "macro replacing a function",
            "view reading a file",
        ):
            (tmp_path / str(len(members))).mkdir()
            members[name] = copy_db(indexed_db, tmp_path / str(len(members)) / "db.duckdb")
            make(members[name])
    con = duckdb.connect(str(members["table name closing its quote"]), read_only=True)
    assert any('"; COPY' in t for (t,) in con.execute("SHOW TABLES").fetchall())
    con.close()
    con = duckdb.connect(str(members["macro replacing a function"]), read_only=True)
    assert con.execute("SELECT lower('A')").fetchone()[0] == SECRET  # plain DuckDB is fooled
    con.close()
    con = duckdb.connect(str(members["view reading a file"]), read_only=True)
    assert con.execute("SELECT handle FROM feature_names").fetchone()[0] == SECRET
    con.close()


def test_a_hostile_sae_id_never_removes_a_folder_beside_the_database(capfd, tmp_path, indexed_db):
    """`index` once globbed `<db>.faiss/{sae_id}.*` and removed what the database did not name:
    an id `../*` deleted every folder with a dot in its name beside the database."""
    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    for victim in ("proj.v1", "photos.2024", "victim.keep"):
        (tmp_path / victim).mkdir()
        (tmp_path / victim / "file").write_text("keep")
    for sae_id in ("../*", "../victim"):
        _rename_sae(db, sae_id)
        code, _, err = run_one(capfd, ["index", "--db", str(db)])
        assert code == 2 and err.startswith("error: ") and "SAE id" in err, err
    for victim in ("proj.v1", "photos.2024", "victim.keep"):
        assert (tmp_path / victim / "file").read_text() == "keep"


def test_names_in_a_received_export_manifest_are_never_sql(capfd, tmp_path, indexed_db):
    """`export --views-only` made `CREATE VIEW "{table}"` from the names in EXPORT.json."""
    out = tmp_path / "export"
    assert run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out)])[0] == 0
    import json

    manifest = json.loads((out / "EXPORT.json").read_text())
    pwned = tmp_path / "pwned.txt"
    evil = f"x\" AS SELECT 1; COPY (SELECT 1) TO '{pwned}'; --"
    manifest["columns"][evil] = ["a"]
    manifest["rows"][evil] = 0
    (out / "EXPORT.json").write_text(json.dumps(manifest))
    code, _, err = run_one(capfd, ["export", "--parquet", str(out), "--views-only"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "not a plain SQL identifier" in err
    assert not pwned.exists()


def test_sql_on_an_export_cannot_write_into_the_export(capfd, tmp_path, indexed_db):
    """The export folder is readable by the views database's queries; DuckDB's allowed
    directories would let a COPY write there too (it emptied an exported table)."""
    out = tmp_path / "export"
    assert run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out)])[0] == 0
    before = snapshot(out)
    views = str(out / "shoggoth.duckdb")
    for query in (
        f"COPY (SELECT * FROM features LIMIT 0) TO '{out}/features.parquet'",
        f"COPY (SELECT 1 AS x) TO '{out}/EXPORT.json' (FORMAT json)",
        f"ATTACH '{out}/new.duckdb' AS n",
        f"EXPORT DATABASE '{out}/dump'",
    ):
        for extra in ([], ["--write"]):
            code, _, err = run_one(capfd, ["sql", "--db", views, *extra, query])
            assert code == 2 and "refused" in err and err.count("\n") == 1, (query, err)
    assert snapshot(out) == before
    code, stdout, _ = run_one(
        capfd, ["sql", "--db", views, "--format", "csv", "SELECT count(*) FROM features"]
    )
    assert code == 0 and int(stdout.splitlines()[1]) > 0


def test_the_views_of_an_export_come_from_its_manifest(capfd, tmp_path, indexed_db):
    """A views database whose `features` view was replaced by one reading another file: `sql`
    defines the export's views again from EXPORT.json, so the query reads the export."""
    out = tmp_path / "export"
    assert run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out)])[0] == 0
    (out / "secret.txt").write_text(SECRET)
    _sql(
        out / "shoggoth.duckdb",
        "DROP VIEW feature_names",
        f"CREATE VIEW feature_names AS SELECT content AS handle FROM "
        f"read_text('{out / 'secret.txt'}')",
    )
    code, stdout, err = run_one(
        capfd,
        [
            "sql",
            "--db",
            str(out / "shoggoth.duckdb"),
            "--format",
            "csv",
            "SELECT handle FROM feature_names",
        ],
    )
    assert code == 0, err
    assert SECRET not in stdout and len(stdout.splitlines()) > 1


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full"])
def test_sql_out_to_a_device_writes_in_place(capfd, indexed_db, target):
    """As root, `sql --out /dev/full` once replaced the device node with a regular file."""
    before = os.stat(target)
    code, _, err = run_one(
        capfd, ["sql", "--db", str(indexed_db), "--format", "csv", "--out", target, "SELECT 1 AS x"]
    )
    after = os.stat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (
        before.st_ino,
        before.st_mode,
        before.st_rdev,
    )
    if target == "/dev/null":
        assert code == 0, err
    else:
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_fifo_output_is_written_in_place(capfd, tmp_path, indexed_db):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, _, err = run_one(
        capfd,
        ["sql", "--db", str(indexed_db), "--format", "csv", "--out", str(fifo), "SELECT 42 AS x"],
    )
    reader.join(10)
    assert code == 0, err
    assert got == [b"x\n42\n"] and fifo.is_fifo()


def test_a_database_given_through_a_link_is_updated_not_replaced(capfd, tmp_path, indexed_db):
    """`index --db <symlink>` once replaced the link with a new regular file."""
    real = (
        copy_db(indexed_db, tmp_path / "real" / "db.duckdb")
        if (tmp_path / "real").mkdir() is None
        else None
    )
    assert real is not None
    link = tmp_path / "link.duckdb"
    link.symlink_to(real)
    before = real.stat().st_ino
    for argv in (
        ["index", "--db", str(link)],
        ["label", "--db", str(link), "--min-docs", "5", "--calibration-seeds", "1"],
    ):
        code, _, err = run_one(capfd, argv)
        assert code == 0, err
        assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.stat().st_ino != before  # (index rebuilt the real file, not the link)
    assert not [p for p in tmp_path.iterdir() if p.name not in ("real", "link.duckdb")]


def test_a_killed_exports_old_copy_is_put_back_or_removed(capfd, tmp_path, indexed_db):
    """`export --overwrite` swaps the old export aside before renaming the new one in: killed
    between the two, it left `.<out>.old-<pid>` (a full copy) and no export; the next export
    puts it back first, and once a new export is in place removes such copies."""
    import shutil

    out = tmp_path / "export"
    assert run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out)])[0] == 0
    aside = tmp_path / ".export.old-999999"
    os.replace(out, aside)  # killed between the renames
    code, _, err = run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out)])
    assert code == 2 and "--overwrite" in err, err  # the old export is back: not replaced
    assert (out / "EXPORT.json").is_file() and not aside.exists()
    shutil.copytree(out, aside)  # a copy left beside a complete export
    assert (
        run_one(capfd, ["export", "--db", str(indexed_db), "--parquet", str(out), "--overwrite"])[0]
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_names_with_terminal_sequences_do_not_reach_the_terminal(tmp_path, indexed_db):
    """An SAE id holding a terminal's control sequences (retitle the window, clear the screen)
    is printed in caret notation on a terminal, and an error line stays one line."""
    import pty
    import subprocess
    import sys

    db = copy_db(indexed_db, tmp_path / "db.duckdb")
    _rename_sae(db, "ev\x1b]0;PWNED\x07il\x1b[2J")
    exe = Path(sys.executable).with_name("shoggoth")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(exe), "status", "--db", str(db)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"},
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(60)
    os.close(leader)
    assert proc.returncode == 0, seen
    assert b"\x1b]0;" not in seen and b"\x07" not in seen and b"\x1b[2J" not in seen, seen
    assert b"ev^[" in seen, seen  # (the table may cut the rest)
