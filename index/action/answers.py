"""The database side of `shoggoth generate`: answer sets, written one batch per transaction,
so an interrupted run keeps every finished batch and resumes after it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.errors import BadInput
from shoggoth.core.versions import library_versions
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.database import WAIT, connect, tables, transaction
from shoggoth.index.store.schema import create_grid_tables

SET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


def start_set(db: Path, name: str, settings: dict[str, Any], config: dict[str, Any]) -> str:
    """Record (or find again) answer set `name` with these settings; returns its status
    ('running' or 'finished'). BadInput when the name holds answers made otherwise."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            create_grid_tables(con)
            row = con.execute(
                "SELECT run_id, status FROM answer_sets WHERE answer_set = ?", [name]
            ).fetchone()
            if row is not None:
                stored = json.loads(
                    one_row(con, "SELECT config_json FROM runs WHERE run_id = ?", [row[0]])[0]
                )["identity"]
                if stored != settings:
                    diff = sorted(k for k in settings if stored.get(k) != settings[k])
                    raise BadInput(
                        f"--name {name}: {db} already holds an answer set of that "
                        f"name made with other settings ({', '.join(diff)}); "
                        "choose another --name"
                    )
                return str(row[1])
            run_id = uuid.uuid4().hex[:12]
            con.execute(
                "INSERT INTO runs VALUES (?, 'generate', ?, ?, now(), NULL, 'running')",
                [
                    run_id,
                    json.dumps({"identity": settings, "config": config}),
                    json.dumps(library_versions()),
                ],
            )
            con.execute(
                "INSERT INTO answer_sets VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                [
                    name,
                    settings["model"],
                    settings["template"],
                    settings["max_tokens"],
                    settings["temperature"],
                    settings["seed"],
                    run_id,
                ],
            )
        return "running"
    finally:
        con.close()


def done_keys(db: Path, name: str) -> set[tuple[str, int, str]]:
    """(persona, paraphrase, item_id) of the answers already written in set `name`."""
    con = connect(db, read_only=True, wait=WAIT)
    try:
        return {
            (p, int(j), i)
            for p, j, i in con.execute(
                "SELECT persona, paraphrase, item_id FROM answers WHERE answer_set = ?", [name]
            ).fetchall()
        }
    finally:
        con.close()


def write_answers(db: Path, name: str, rows: pd.DataFrame) -> None:
    """One batch of answers (persona, paraphrase, item_id, text, n_tokens, stop_reason), in one
    transaction."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            con.register("_answers", rows)
            try:
                con.execute(
                    "INSERT INTO answers SELECT ?, persona, paraphrase, item_id, text, "
                    "n_tokens, stop_reason FROM _answers",
                    [name],
                )
            finally:
                con.unregister("_answers")
    finally:
        con.close()


def finish_set(db: Path, name: str) -> None:
    """Mark the set (and its run) finished."""
    con = connect(db, wait=WAIT)
    try:
        with transaction(con):
            con.execute("UPDATE answer_sets SET status = 'finished' WHERE answer_set = ?", [name])
            con.execute(
                "UPDATE runs SET status = 'finished', finished_at = now() WHERE run_id = "
                "(SELECT run_id FROM answer_sets WHERE answer_set = ?)",
                [name],
            )
    finally:
        con.close()


def read_answers(con: Connection, name: str) -> pd.DataFrame:
    """A finished answer set's rows; BadInput when it is missing or unfinished."""
    if "answer_sets" not in tables(con):
        raise BadInput(
            "--answers: the database holds no generated answers; run `shoggoth generate` first"
        )
    row = con.execute("SELECT status FROM answer_sets WHERE answer_set = ?", [name]).fetchone()
    if row is None:
        have = [r[0] for r in con.execute("SELECT answer_set FROM answer_sets").fetchall()]
        raise BadInput(
            f"--answers {name}: no such answer set (the database holds {', '.join(have) or 'none'})"
        )
    if row[0] != "finished":
        raise BadInput(
            f"--answers {name}: unfinished; rerun the `shoggoth generate` that made "
            "it to complete it"
        )
    return con.execute(
        "SELECT persona, paraphrase, item_id, text, n_tokens, stop_reason "
        "FROM answers WHERE answer_set = ? ORDER BY persona, paraphrase, item_id",
        [name],
    ).df()
