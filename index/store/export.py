"""`shoggoth export`: the feature database as Parquet, with a DuckDB file of views over it.

The bulk tables become Hive-partitioned Parquet (`activations/sae_id=…/persona=…/*.parquet`,
sorted by feature within each partition, so a query for one feature reads only the row groups
whose min/max covers it); every other table is one Parquet file. Beside them, `shoggoth.duckdb`
holds a view per table (same name, same columns, same order), the `feature_labels` and
`feature_names` views and the
`example_contexts` macro, so the documented queries run unchanged on the laptop file, on the
export, or on the export copied to object storage (`--location s3://…`).

The export is built in a sibling folder and renamed into place; an interrupted export leaves the
last good one (or none) and its leftovers are removed by the next run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from shoggoth.core.atomic import publish, write_json_atomic
from shoggoth.core.config import Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.names import identifier, shown_name
from shoggoth.core.outputs import is_duckdb_file, refuse_output_over
from shoggoth.index.store.database import WAIT, connect, remove, require_shoggoth, tables
from shoggoth.index.store.schema import (
    EXAMPLE_CONTEXTS_MACRO,
    FEATURE_LABELS_VIEW,
    create_names_view,
    quote,
)

PARTITIONED: dict[str, tuple[tuple[str, ...], str]] = {
    "activations": (("sae_id", "persona"), "feature, paraphrase, item_id, pos"),
    "doc_features": (("sae_id", "persona"), "feature, paraphrase, item_id"),
    "documents": (("sae_id",), "persona, paraphrase, item_id"),
    "tokens": (("sae_id",), "item_id, pos"),
    "residual_sums": (("sae_id",), "persona, paraphrase, item_id"),
    "document_shifts": (("sae_id",), "persona, paraphrase, item_id"),
    "grid_doc_features": (("sae_id",), "feature, answer_set, neutral, doc"),
}
"""Table → (Hive partition columns, sort order within a partition)."""
VIEWS_DB = "shoggoth.duckdb"
MANIFEST = "EXPORT.json"


@dataclass
class ExportConfig(Config):
    """`shoggoth export`: the database as Hive-partitioned Parquet plus a DuckDB file of
    views."""

    parquet: Path = option(required="the export folder")
    """The export folder: written (replaced only with --overwrite), or with --views-only read."""
    db: Path | None = None
    """The feature database to export (not needed with --views-only)."""
    location: str | None = None
    """Where the views read the Parquet files from (default: the export folder): after copying
    the folder to object storage, `--views-only --location s3://bucket/prefix` makes views that
    read it there (DuckDB's httpfs, with credentials from a DuckDB secret)."""
    views: Path | None = None
    """The views database to write (default: shoggoth.duckdb in the export folder)."""
    views_only: bool = False
    """Only (re)write the views database of an existing export."""
    row_group_size: int = option(122_880, min=1_024, max=100_000_000)
    """Rows per Parquet row group (the unit a query skips by its min/max statistics)."""
    overwrite: bool = False
    """Replace an existing export at --parquet."""

    def check(self) -> None:
        if self.location is not None and not self.location.strip():
            raise BadInput("--location: empty")
        if self.db is None and not self.views_only:
            raise BadInput("--db: the database to export is missing (or pass --views-only)")
        if self.location is not None and not self.views_only:
            raise BadInput("--location: needs --views-only (views bind to files that are "
                           "already there: export, copy the folder, then write its views)")
        if not self.views_only:
            refuse_output_over(self.parquet, "--parquet", [self.db])
        if self.views is not None:
            refuse_output_over(self.views, "--views", [self.db], replaceable=True)


def refuse_foreign_views(path: Path) -> None:
    """An existing `--views` file may be replaced only when it is a views database of an export
    (nothing but views and `export_info`): never a database that holds tables."""
    if not path.exists():
        return
    if not path.is_file() or not is_duckdb_file(path):
        raise BadInput(f"--views {path}: exists and is not a views database; nothing was "
                       "replaced")
    con = connect(path, read_only=True, what="--views", wait=WAIT)
    try:
        held = set(tables(con)) - {"export_info"}
    finally:
        con.close()
    if held:
        raise BadInput(f"--views {path}: is a database with tables ({', '.join(sorted(held)[:3])}"
                       "…), not a views database; nothing was replaced")


MANIFEST_LIMIT = 16 << 20
"""Bytes an EXPORT.json may hold (a real one holds a few KiB)."""


@dataclass(frozen=True)
class Manifest:
    """What an export holds (its EXPORT.json): read back from a received folder, every name in
    it checked before it reaches SQL."""

    source: str
    """The database the export was made from (its path then)."""
    exported_at: str
    """When, in ISO 8601."""
    columns: dict[str, list[str]]
    """Table → its columns, in the table's order."""
    rows: dict[str, int]
    """Table → its row count."""

    def as_json(self) -> dict[str, Any]:
        """The manifest as EXPORT.json holds it."""
        return {"source": self.source, "columns": self.columns, "rows": self.rows,
                "exported_at": self.exported_at}


def read_manifest(folder: Path, flag: str = "--parquet") -> Manifest:
    """The manifest of the export in `folder`; BadInput in one line when it is missing, too
    large, not JSON of the expected shape, or names a table or column that is not a plain
    identifier (such a name is never pasted into a statement)."""
    path = folder / MANIFEST
    where = f"{flag} {folder}: {MANIFEST}"
    try:
        with path.open("rb") as f:
            raw = f.read(MANIFEST_LIMIT + 1)
    except OSError as e:
        raise BadInput(f"{where}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MANIFEST_LIMIT:
        raise BadInput(f"{where}: larger than {MANIFEST_LIMIT >> 20} MiB; not a shoggoth "
                       "export")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInput(f"{where}: not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict) or \
            not isinstance(data.get("rows"), dict):
        raise BadInput(f"{where}: not a shoggoth export manifest (no columns and rows)")
    columns: dict[str, list[str]] = {}
    for table, names in data["columns"].items():
        identifier(table, f"{where}: table")
        if not isinstance(names, list) or not names:
            raise BadInput(f"{where}: the columns of '{table}' are not a list of names")
        for name in names:
            identifier(name, f"{where}: a column of '{table}'")
        columns[table] = list(names)
    rows = data["rows"]
    if set(rows) != set(columns) or not all(type(n) is int and n >= 0 for n in rows.values()):
        raise BadInput(f"{where}: its row counts do not match its tables")
    return Manifest(str(data.get("source", "")), str(data.get("exported_at", "")), columns,
                    dict(rows))


def _columns(con: Any, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
        "AND database_name = current_database() ORDER BY column_index", [table]).fetchall()]


def copy_table(con: Any, table: str, columns: list[str], rows: int, folder: Path,
               row_group: int) -> None:
    """One table (its `columns`, `rows` rows) to Parquet under `folder`, partitioned and sorted
    when it is a bulk table. ENUM columns are written as text."""
    name = identifier(table, f"table '{shown_name(table)}'")
    quoted = [identifier(c, f"a column of '{table}'") for c in columns]
    select = ", ".join(f"{q}::VARCHAR AS {q}" if c in ("persona", "item_id") else q
                       for c, q in zip(columns, quoted, strict=True))
    if table in PARTITIONED and not rows:  # no partition to write: one empty file keeps the columns
        (folder / table).mkdir()
        con.execute(f"COPY (SELECT {select} FROM {name}) TO "
                    f"{quote(str(folder / table / 'empty.parquet'))} (FORMAT parquet)")
    elif table in PARTITIONED:
        parts, order = PARTITIONED[table]
        # A partitioned write keeps the sorted order within each file only on one thread.
        threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
        con.execute("SET threads = 1")
        try:
            con.execute(f"COPY (SELECT {select} FROM {name} ORDER BY {', '.join(parts)}, "
                        f"{order}) TO {quote(str(folder / table))} (FORMAT parquet, "
                        f"COMPRESSION zstd, ROW_GROUP_SIZE {row_group}, "
                        f"PARTITION_BY ({', '.join(parts)}))")
        finally:
            con.execute(f"SET threads = {int(threads)}")
    else:
        con.execute(f"COPY (SELECT {select} FROM {name}) TO "
                    f"{quote(str(folder / (table + '.parquet')))} (FORMAT parquet, "
                    f"COMPRESSION zstd, ROW_GROUP_SIZE {row_group})")


def view_sql(table: str, columns: list[str], location: str, temp: bool = False) -> str:
    """The view that reads `table`'s Parquet at `location`, its columns in the table's order
    (`temp`: a temporary view of one connection). Names are checked plain identifiers."""
    base = location.rstrip("/")
    if table in PARTITIONED:
        source = (f"read_parquet({quote(f'{base}/{table}/**/*.parquet')}, "
                  "hive_partitioning = true, hive_types_autocast = false)")
    else:
        source = f"read_parquet({quote(f'{base}/{table}.parquet')})"
    names = ", ".join(identifier(c, f"a column of '{table}'") for c in columns)
    kind = "OR REPLACE TEMP VIEW" if temp else "VIEW"
    return f"CREATE {kind} {identifier(table, 'table')} AS SELECT {names} FROM {source}"


def write_views(path: Path, manifest: Manifest, location: str) -> None:
    """The views database, atomically: a view per exported table, feature_labels,
    example_contexts, and `export_info` (where the files are, what they came from, row
    counts). The views bind when made, so the files must be at `location` already."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    remove(tmp)
    remote = "://" in location  # object storage: DuckDB's httpfs reads it
    con = connect(tmp, folders=[] if remote else [Path(location)],
                  config={"enable_external_access": True, "autoload_known_extensions": True}
                  if remote else None)
    try:
        for table, columns in manifest.columns.items():
            con.execute(view_sql(table, columns, location))
        if {"features", "annotations"} <= set(manifest.columns):
            con.execute(FEATURE_LABELS_VIEW)
        if {"examples", "tokens"} <= set(manifest.columns):
            con.execute(EXAMPLE_CONTEXTS_MACRO)
        if {"feature_handles", "feature_explanations"} <= set(manifest.columns):
            create_names_view(con)
        con.execute("CREATE TABLE export_info (location VARCHAR, source VARCHAR, "
                    "exported_at VARCHAR, row_counts JSON)")
        con.execute("INSERT INTO export_info VALUES (?, ?, ?, ?)",
                    [location, manifest.source, manifest.exported_at,
                     json.dumps(manifest.rows)])
        con.execute("CHECKPOINT")
    except duckdb.Error as e:
        con.close()
        remove(tmp)
        raise BadInput(f"--location {location}: the views cannot read the export there: "
                       f"{str(e).splitlines()[0]}") from None
    except BaseException:
        con.close()
        remove(tmp)
        raise
    con.close()
    os.replace(tmp, path)


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the export (or only its views); returns where, the row counts and the bytes."""
    out = cfg.parquet.resolve()
    views = (cfg.views or out / VIEWS_DB).resolve()
    location = cfg.location or str(out)
    refuse_foreign_views(views)
    if cfg.views_only:
        if not (out / MANIFEST).is_file():
            raise BadInput(f"--parquet {cfg.parquet}: not a shoggoth export (no {MANIFEST})")
        manifest = read_manifest(out)
    else:
        manifest = write_parquet(cfg, out)
    write_views(views, manifest, location)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"parquet": str(out), "views": str(views), "location": location,
            "rows": manifest.rows, "bytes": size}


def write_parquet(cfg: ExportConfig, out: Path) -> Manifest:
    """Every table of --db to Parquet, built aside and renamed to `out`; returns the manifest
    (also saved as EXPORT.json: the columns, row counts and source of every table). The
    connection may write only into the folder being built; a table or column whose name is not
    a plain identifier is refused before anything is written."""
    db = cfg.db
    assert db is not None  # (check(): --db is needed unless --views-only)
    if not db.is_file():
        raise BadInput(f"--db {cfg.db}: no such file")
    clear_leftovers(out)  # (first: it may put back the export a killed run swapped aside)
    if out.exists() and not cfg.overwrite:
        raise BadInput(f"--parquet {cfg.parquet}: exists; pass --overwrite to replace it")
    if out.exists() and not (out / MANIFEST).is_file():
        raise BadInput(f"--parquet {cfg.parquet}: exists and is not a shoggoth export; "
                       "nothing was replaced")
    if not out.parent.is_dir():
        raise BadInput(f"--parquet {cfg.parquet}: its folder {out.parent} does not exist")
    built = out.parent / f".{out.name}.partial-{os.getpid()}"
    con = connect(db, read_only=True, wait=WAIT, folders=[built])
    try:
        require_shoggoth(con, db)
        names = sorted(tables(con))
        if not names:
            raise BadInput(f"--db {cfg.db}: is empty")
        columns = {t: _columns(con, t) for t in names}
        for table, cols in columns.items():  # every name checked before anything is written
            identifier(table, f"--db {cfg.db}: table")
            for c in cols:
                identifier(c, f"--db {cfg.db}: a column of '{table}'")
        built.mkdir()
        rows: dict[str, int] = {}
        for table in names:
            rows[table] = int(con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
            copy_table(con, table, columns[table], rows[table], built, cfg.row_group_size)
        manifest = Manifest(str(db.resolve()), datetime.now(UTC).isoformat(), columns, rows)
        write_json_atomic(built / MANIFEST, manifest.as_json())
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    finally:
        con.close()
    publish(built, out)
    return manifest


def clear_leftovers(out: Path) -> None:
    """Remove what killed exports to `out` left beside it: folders being built, and an old
    export swapped aside (put back first when the kill came before the new one was in place)."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        if not out.exists() and (old / MANIFEST).is_file():
            os.replace(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
