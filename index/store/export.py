"""`shoggoth export`: the feature database as Parquet, with a DuckDB file of views over it.

The bulk tables become Hive-partitioned Parquet (`activations/sae_id=…/persona=…/*.parquet`,
sorted by feature within each partition, so a query for one feature reads only the row groups
whose min/max covers it), the partition columns kept in the files too; every other table is one
Parquet file. Beside them, `shoggoth.duckdb` holds a view per table (same name, same columns,
same order), the `feature_labels` and `feature_names` views and the
`example_contexts` macro, so the documented queries run unchanged on the laptop file, on the
export, or on the export copied to object storage (`--location s3://…`); `README.md` is a
Hugging Face dataset card with one config per table, so `datasets.load_dataset(DIR, table)`
reads each table whole. `--delphi DIR` writes one SAE's harvest as delphi's latent cache
(index/store/delphi.py), and `--neuronpedia DIR` one SAE's dictionary in Neuronpedia's
bulk-import layout (index/store/neuronpedia.py, uploaded too with `--neuronpedia-url`), alone
or beside the Parquet export.

Each export is built in a sibling folder and renamed into place once all are built; an
interrupted export leaves the last good one (or none) and its leftovers are removed by the next
run.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import yaml

from shoggoth.core.atomic import publish, write_json_atomic
from shoggoth.core.config import Config, option
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.names import identifier, shown_name
from shoggoth.core.outputs import is_duckdb_file, refuse_output_over
from shoggoth.index.store import delphi, neuronpedia, neuronpedia_upload
from shoggoth.index.store.connection import Connection, one_row
from shoggoth.index.store.database import WAIT, connect, remove, require_shoggoth, tables
from shoggoth.index.store.neuronpedia import DEFAULT_CREATOR as NEURONPEDIA_CREATOR
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
CARD = "README.md"
"""The export's Hugging Face dataset card (`configs:`: one per table)."""


@dataclass
class ExportConfig(Config):
    """`shoggoth export`: the database as Hive-partitioned Parquet plus a DuckDB file of
    views, and/or one SAE's harvest as delphi's latent cache, and/or one SAE's dictionary for
    Neuronpedia."""

    parquet: Path | None = None
    """The Parquet export folder: written (replaced only with --overwrite), or with
    --views-only read."""
    delphi: Path | None = None
    """Also (or only) write one SAE's harvest as delphi's latent cache into this folder:
    latents/{hook}/{start}_{end}.safetensors, latents/{hook}/config.json and rows.parquet
    (replaced only with --overwrite)."""
    neuronpedia: Path | None = None
    """Also (or only) write one SAE's dictionary in Neuronpedia's bulk-import layout into this
    folder: {modelId}/{layer}-{sourceSet}/ with release, model, sourceset and source .jsonl and
    features/, activations/, explanations/batch-N.jsonl.gz (replaced only with --overwrite;
    needs `shoggoth index`)."""
    neuronpedia_model: str | None = None
    """The Neuronpedia model id (default: from the SAE's neuronpedia_id)."""
    neuronpedia_source: str | None = None
    """The Neuronpedia source, {layer}-{sourceSet}, e.g. 8-res-jb (default: from the SAE's
    neuronpedia_id)."""
    neuronpedia_creator: str = NEURONPEDIA_CREATOR
    """The instance user id every --neuronpedia row names as its creator (default: the user a
    Neuronpedia instance seeds)."""
    neuronpedia_url: str | None = None
    """Also upload the --neuronpedia export to this Neuronpedia instance (e.g.
    https://www.neuronpedia.org) through its upload-batch API, with the key in
    NEURONPEDIA_API_KEY; you must own the source set there."""
    neuronpedia_untyped: bool = False
    """Upload the explanations without their type (methodName): for an instance that does not
    know shoggoth-label and shoggoth-explain, which refuses unknown types."""
    sae: str | None = None
    """The SAE that --delphi or --neuronpedia exports (default: the database's only harvested
    SAE)."""
    delphi_splits: int = option(5, min=1, max=1_000)
    """Files --delphi splits the latents into (delphi's n_splits: boundaries from
    torch.linspace(0, d_sae, n + 1))."""
    delphi_pad_token: int = option(0, min=0, max=2**31 - 1)
    """The token id that fills each --delphi row after its answer (give the model's pad or
    EOS id); no activation is ever at a padded position."""
    delphi_ctx_multiple: int = option(32, min=1, max=4_096)
    """--delphi rows are the longest answer rounded up to a multiple of this many tokens:
    delphi's example_ctx_len (default 32) must divide the row length."""
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
    """Replace an existing export at --parquet (and the cache at --delphi, the export at
    --neuronpedia)."""

    def check(self) -> None:
        if self.parquet is None and self.delphi is None and self.neuronpedia is None:
            raise BadInput("--parquet, --delphi, --neuronpedia: give at least one export folder")
        if self.parquet is None:
            for flag, given in (
                ("--views-only", self.views_only),
                ("--views", self.views),
                ("--location", self.location),
            ):
                if given:
                    raise BadInput(f"{flag}: needs --parquet (it concerns the Parquet export)")
        if self.delphi is not None and self.views_only:
            raise BadInput("--delphi: not with --views-only (the cache is read from --db)")
        if self.neuronpedia is not None and self.views_only:
            raise BadInput("--neuronpedia: not with --views-only (the export is read from --db)")
        if self.sae is not None and self.delphi is None and self.neuronpedia is None:
            raise BadInput(
                "--sae: only --delphi and --neuronpedia export one SAE (the Parquet "
                "export holds every SAE)"
            )
        self.check_neuronpedia()
        if self.location is not None and not self.location.strip():
            raise BadInput("--location: empty")
        if self.db is None and not self.views_only:
            raise BadInput("--db: the database to export is missing (or pass --views-only)")
        if self.location is not None and not self.views_only:
            raise BadInput(
                "--location: needs --views-only (views bind to files that are "
                "already there: export, copy the folder, then write its views)"
            )
        if not self.views_only and self.parquet is not None:
            refuse_output_over(self.parquet, "--parquet", [self.db])
        if self.delphi is not None:
            refuse_output_over(self.delphi, "--delphi", [self.db])
            refuse_nested(self.delphi, self.parquet)
        if self.neuronpedia is not None:
            refuse_output_over(self.neuronpedia, "--neuronpedia", [self.db])
            refuse_nested(self.neuronpedia, self.parquet, "--neuronpedia")
            refuse_nested(self.neuronpedia, self.delphi, "--neuronpedia", "--delphi")
        if self.views is not None:
            refuse_output_over(self.views, "--views", [self.db], replaceable=True)

    def check_neuronpedia(self) -> None:
        """The --neuronpedia-* flags: only with --neuronpedia, well-formed, and the API key in
        the environment when uploading."""
        if self.neuronpedia is None:
            for flag, given in (
                ("--neuronpedia-model", self.neuronpedia_model),
                ("--neuronpedia-source", self.neuronpedia_source),
                ("--neuronpedia-url", self.neuronpedia_url),
                ("--neuronpedia-untyped", self.neuronpedia_untyped),
                ("--neuronpedia-creator", self.neuronpedia_creator != NEURONPEDIA_CREATOR),
            ):
                if given:
                    raise BadInput(
                        f"{flag}: needs --neuronpedia DIR (it concerns the Neuronpedia export)"
                    )
            return
        if self.neuronpedia_model is not None:
            neuronpedia.check_model(self.neuronpedia_model)
        if self.neuronpedia_source is not None:
            neuronpedia.check_source(self.neuronpedia_source)
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", self.neuronpedia_creator):
            raise BadInput(
                f"--neuronpedia-creator '{shown_name(self.neuronpedia_creator)}': "
                "not a Neuronpedia user id (letters, digits, '_', '-')"
            )
        if self.neuronpedia_url is not None:
            neuronpedia_upload.check_url(self.neuronpedia_url)
            if not os.environ.get(neuronpedia_upload.KEY_ENV, "").strip():
                raise BadInput(
                    f"--neuronpedia-url: no API key; set "
                    f"{neuronpedia_upload.KEY_ENV} (the key is under Settings on "
                    "the Neuronpedia instance)"
                )


def refuse_nested(
    out: Path, other: Path | None, flag: str = "--delphi", other_flag: str = "--parquet"
) -> None:
    """BadInput when the `flag` folder and the `other_flag` folder are one, or one holds the
    other (each is replaced as a whole)."""
    if other is None:
        return
    a, b = out.expanduser().resolve(), other.expanduser().resolve()
    if a == b or a in b.parents or b in a.parents:
        raise BadInput(
            f"{flag} {out}: is or overlaps the {other_flag} folder {other}; "
            "choose separate folders, nothing was written"
        )


def refuse_foreign_views(path: Path) -> None:
    """An existing `--views` file may be replaced only when it is a views database of an export
    (nothing but views and `export_info`): never a database that holds tables."""
    if not path.exists():
        return
    if not path.is_file() or not is_duckdb_file(path):
        raise BadInput(f"--views {path}: exists and is not a views database; nothing was replaced")
    con = connect(path, read_only=True, what="--views", wait=WAIT)
    try:
        held = set(tables(con)) - {"export_info"}
    finally:
        con.close()
    if held:
        raise BadInput(
            f"--views {path}: is a database with tables ({', '.join(sorted(held)[:3])}"
            "…), not a views database; nothing was replaced"
        )


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
        return {
            "source": self.source,
            "columns": self.columns,
            "rows": self.rows,
            "exported_at": self.exported_at,
        }


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
        raise BadInput(f"{where}: larger than {MANIFEST_LIMIT >> 20} MiB; not a shoggoth export")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInput(f"{where}: not JSON") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), dict)
        or not isinstance(data.get("rows"), dict)
    ):
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
    return Manifest(
        str(data.get("source", "")), str(data.get("exported_at", "")), columns, dict(rows)
    )


def _columns(con: Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() "
            "WHERE table_name = ? AND schema_name = 'main' "
            "AND database_name = current_database() ORDER BY column_index",
            [table],
        ).fetchall()
    ]


def _select(table: str, columns: list[str]) -> str:
    """The select list that exports `table`'s `columns`: persona and item_id (ENUMs in the
    database) as text. Names are checked plain identifiers."""
    quoted = [identifier(c, f"a column of '{table}'") for c in columns]
    return ", ".join(
        f"{q}::VARCHAR AS {q}" if c in ("persona", "item_id") else q
        for c, q in zip(columns, quoted, strict=True)
    )


def exported_types(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str]
) -> list[tuple[str, str]]:
    """`table`'s columns with the DuckDB types they have in the export (and its views)."""
    name = identifier(table, f"table '{shown_name(table)}'")
    return [
        (r[0], r[1])
        for r in con.execute(f"DESCRIBE SELECT {_select(table, columns)} FROM {name}").fetchall()
    ]


def copy_table(
    con: Connection, table: str, columns: list[str], rows: int, folder: Path, row_group: int
) -> None:
    """One table (its `columns`, `rows` rows) to Parquet under `folder`, partitioned and sorted
    when it is a bulk table; the partition columns are also written into the files, so a
    reader that ignores the Hive folder names (Hugging Face `datasets`) still has them. ENUM
    columns are written as text."""
    name = identifier(table, f"table '{shown_name(table)}'")
    select = _select(table, columns)
    if table in PARTITIONED and not rows:  # no partition to write: one empty file keeps the columns
        (folder / table).mkdir()
        con.execute(
            f"COPY (SELECT {select} FROM {name}) TO "
            f"{quote(str(folder / table / 'empty.parquet'))} (FORMAT parquet)"
        )
    elif table in PARTITIONED:
        parts, order = PARTITIONED[table]
        # A partitioned write keeps the sorted order within each file only on one thread.
        threads = one_row(con, "SELECT current_setting('threads')")[0]
        con.execute("SET threads = 1")
        try:
            con.execute(
                f"COPY (SELECT {select} FROM {name} ORDER BY {', '.join(parts)}, "
                f"{order}) TO {quote(str(folder / table))} (FORMAT parquet, "
                f"COMPRESSION zstd, ROW_GROUP_SIZE {row_group}, "
                f"PARTITION_BY ({', '.join(parts)}), WRITE_PARTITION_COLUMNS true)"
            )
        finally:
            con.execute(f"SET threads = {int(threads)}")
    else:
        con.execute(
            f"COPY (SELECT {select} FROM {name}) TO "
            f"{quote(str(folder / (table + '.parquet')))} (FORMAT parquet, "
            f"COMPRESSION zstd, ROW_GROUP_SIZE {row_group})"
        )


def data_files(table: str) -> str:
    """The glob, relative to the export folder, of `table`'s Parquet files."""
    return f"{table}/**/*.parquet" if table in PARTITIONED else f"{table}.parquet"


def card(types: dict[str, list[tuple[str, str]]], rows: dict[str, int], source: str) -> str:
    """The export's README.md, a Hugging Face dataset card: YAML front matter with one config
    per table (`datasets.load_dataset(DIR, table)`), then each table's rows and columns and
    how to query the export with SQL. `source`: the database's file name."""
    front = yaml.safe_dump(
        {"configs": [{"config_name": t, "data_files": data_files(t)} for t in types]},
        sort_keys=False,
    )
    parts = "; ".join(f"`{t}` by {', '.join(PARTITIONED[t][0])}" for t in types if t in PARTITIONED)
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        "# shoggoth feature database export",
        "",
        f"Written by `shoggoth export` from `{source}`: one config per table, its Parquet "
        f"files given by `data_files`. The bulk tables are Hive-partitioned ({parts}); "
        "the partition columns are also stored in the files, so every reader sees them. "
        "Column meanings: docs/schema.md in the shoggoth repository.",
        "",
        "```python",
        "from datasets import load_dataset",
        'activations = load_dataset("DIR", "activations", split="train")',
        "```",
        "",
        "The same tables through SQL (DuckDB views over these files, with the "
        "`feature_labels` view and the `example_contexts` macro):",
        "",
        "```sh",
        'shoggoth sql --db DIR/shoggoth.duckdb "SELECT persona, count(*) FROM activations '
        'GROUP BY persona"',
        "```",
        "",
        "| table | rows | columns |",
        "|---|---:|---|",
    ]
    for table, cols in types.items():
        listed = ", ".join(f"{name} ({kind})" for name, kind in cols)
        lines.append(f"| {table} | {rows[table]:,} | {listed} |")
    return "\n".join(lines) + "\n"


def view_sql(table: str, columns: list[str], location: str, temp: bool = False) -> str:
    """The view that reads `table`'s Parquet at `location`, its columns in the table's order
    (`temp`: a temporary view of one connection). Names are checked plain identifiers."""
    base = location.rstrip("/")
    if table in PARTITIONED:
        source = (
            f"read_parquet({quote(f'{base}/{table}/**/*.parquet')}, "
            "hive_partitioning = true, hive_types_autocast = false)"
        )
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
    con = connect(
        tmp,
        folders=[] if remote else [Path(location)],
        config={"enable_external_access": True, "autoload_known_extensions": True}
        if remote
        else None,
    )
    try:
        for table, columns in manifest.columns.items():
            con.execute(view_sql(table, columns, location))
        if {"features", "annotations"} <= set(manifest.columns):
            con.execute(FEATURE_LABELS_VIEW)
        if {"examples", "tokens"} <= set(manifest.columns):
            con.execute(EXAMPLE_CONTEXTS_MACRO)
        if {"feature_handles", "feature_explanations"} <= set(manifest.columns):
            create_names_view(con)
        con.execute(
            "CREATE TABLE export_info (location VARCHAR, source VARCHAR, "
            "exported_at VARCHAR, row_counts JSON)"
        )
        con.execute(
            "INSERT INTO export_info VALUES (?, ?, ?, ?)",
            [location, manifest.source, manifest.exported_at, json.dumps(manifest.rows)],
        )
        con.execute("CHECKPOINT")
    except duckdb.Error as e:
        con.close()
        remove(tmp)
        raise BadInput(
            f"--location {location}: the views cannot read the export there: "
            f"{str(e).splitlines()[0]}"
        ) from None
    except BaseException:
        con.close()
        remove(tmp)
        raise
    con.close()
    os.replace(tmp, path)


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the Parquet export (or only its views), the delphi cache and/or the Neuronpedia
    export, then upload the last with --neuronpedia-url. Each is built aside, and all are
    renamed into place only once all are built: a refusal or a failure leaves the earlier
    exports as they were. Returns, for the Parquet export, where it is, its row counts and
    bytes; under "delphi", what the cache holds; under "neuronpedia", what that export holds
    and what was uploaded."""
    if cfg.views_only:
        assert cfg.parquet is not None  # (check(): --views-only needs --parquet)
        out = cfg.parquet.resolve()
        views = (cfg.views or out / VIEWS_DB).resolve()
        refuse_foreign_views(views)
        if not (out / MANIFEST).is_file():
            raise BadInput(f"--parquet {cfg.parquet}: not a shoggoth export (no {MANIFEST})")
        return parquet_views(cfg, out, read_manifest(out))
    db = cfg.db
    assert db is not None  # (check(): --db is needed unless --views-only)
    if not db.is_file():
        raise BadInput(f"--db {cfg.db}: no such file")
    pq_out = cfg.parquet.resolve() if cfg.parquet is not None else None
    cache_out = cfg.delphi.resolve() if cfg.delphi is not None else None
    np_out = cfg.neuronpedia.resolve() if cfg.neuronpedia is not None else None
    pq_built = cache_built = np_built = np_plan = None
    if pq_out is not None:
        refuse_foreign_views((cfg.views or pq_out / VIEWS_DB).resolve())
        pq_built = prepare(pq_out, f"--parquet {cfg.parquet}", MANIFEST, cfg.overwrite)
    if cache_out is not None:
        cache_built = prepare(cache_out, f"--delphi {cfg.delphi}", delphi.ROWS_FILE, cfg.overwrite)
    if np_out is not None:
        np_built = prepare(
            np_out, f"--neuronpedia {cfg.neuronpedia}", neuronpedia.MARKER, cfg.overwrite
        )
        np_plan = plan_neuronpedia(cfg, db)  # (refused before the other exports are built)
    manifest = harvest = written = None
    try:
        if pq_built is not None:
            manifest = build_parquet(cfg, db, pq_built)
        if cache_built is not None:
            harvest = build_delphi(cfg, db, cache_built)
        if np_built is not None and np_plan is not None:
            written = build_neuronpedia(db, np_plan, np_built)
    except BaseException:
        for built in (pq_built, cache_built, np_built):
            if built is not None:
                shutil.rmtree(built, ignore_errors=True)
        raise
    result: dict[str, Any] = {}
    if cache_out is not None and cache_built is not None and harvest is not None:
        publish(cache_built, cache_out)
        result["delphi"] = {
            "folder": str(cache_out),
            "sae_id": harvest.sae_id,
            "hook": harvest.hook,
            "rows": harvest.rows,
            "ctx": harvest.ctx,
            "activations": harvest.activations,
            "splits": cfg.delphi_splits,
            "bytes": folder_bytes(cache_out),
        }
    if np_out is not None and np_built is not None and written is not None:
        publish(np_built, np_out)
        result["neuronpedia"] = neuronpedia_result(np_out, written)
    if pq_out is not None and pq_built is not None and manifest is not None:
        publish(pq_built, pq_out)
        result |= parquet_views(cfg, pq_out, manifest)
    if np_out is not None and written is not None and cfg.neuronpedia_url is not None:
        target = written.plan.target
        sent = neuronpedia_upload.upload(
            np_out / target.folder,
            target,
            cfg.neuronpedia_url,
            os.environ.get(neuronpedia_upload.KEY_ENV, "").strip(),
            typed=not cfg.neuronpedia_untyped,
        )
        result["neuronpedia"]["uploaded"] = {
            "endpoint": sent.endpoint,
            "features": sent.features,
            "requests": sent.requests,
        }
    return result


def neuronpedia_result(out: Path, written: neuronpedia.Written) -> dict[str, Any]:
    """What the published Neuronpedia export in `out` holds."""
    target = written.plan.target
    return {
        "folder": str(out),
        "source_folder": str(out / target.folder),
        "sae_id": written.plan.sae_id,
        "model_id": target.model_id,
        "source": target.source,
        "features": written.features,
        "activations": written.activations,
        "explanations": written.explanations,
        "batches": written.batches,
        "bytes": folder_bytes(out),
    }


def parquet_views(cfg: ExportConfig, out: Path, manifest: Manifest) -> dict[str, Any]:
    """The views database of the Parquet export in `out`; returns where the export and its
    views are, its row counts and its bytes."""
    views = (cfg.views or out / VIEWS_DB).resolve()
    location = cfg.location or str(out)
    write_views(views, manifest, location)
    return {
        "parquet": str(out),
        "views": str(views),
        "location": location,
        "rows": manifest.rows,
        "bytes": folder_bytes(out),
    }


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder`."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prepare(out: Path, given: str, marker: str, overwrite: bool) -> Path:
    """Where an export to `out` is built: a sibling folder, not made yet. First removes what
    killed exports left (`clear_leftovers`); BadInput naming `given` (the flag and its value)
    when `out` exists without --overwrite, exists without `marker` (the file every such export
    holds: a folder that is not one is never replaced), or its folder does not exist."""
    clear_leftovers(out, marker)  # (first: it may put back the export a killed run swapped aside)
    if out.exists() and not overwrite:
        raise BadInput(f"{given}: exists; pass --overwrite to replace it")
    if out.exists() and not (out / marker).is_file():
        raise BadInput(f"{given}: exists and is not a shoggoth export; nothing was replaced")
    if not out.parent.is_dir():
        raise BadInput(f"{given}: its folder {out.parent} does not exist")
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def build_parquet(cfg: ExportConfig, db: Path, built: Path) -> Manifest:
    """Every table of `db` to Parquet in the new folder `built`, with README.md (the dataset
    card) and EXPORT.json (the manifest: the columns, row counts and source of every table,
    returned). The connection may write only into `built`; a table or column whose name is not
    a plain identifier is refused before anything is written. On any failure `built` is
    removed."""
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
            rows[table] = int(one_row(con, f'SELECT count(*) FROM "{table}"')[0])
            copy_table(con, table, columns[table], rows[table], built, cfg.row_group_size)
        manifest = Manifest(str(db.resolve()), datetime.now(UTC).isoformat(), columns, rows)
        write_json_atomic(built / MANIFEST, manifest.as_json())
        types = {t: exported_types(con, t, columns[t]) for t in names}
        (built / CARD).write_text(card(types, rows, shown_name(db.name)))
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    finally:
        con.close()
    return manifest


def build_delphi(cfg: ExportConfig, db: Path, built: Path) -> delphi.Harvest:
    """The --sae harvest of `db` as delphi's latent cache in the new folder `built` (see
    index/store/delphi.py); returns the harvest it holds. Everything is checked before the
    folder is made; on any failure it is removed."""
    options = delphi.CacheOptions(cfg.delphi_splits, cfg.delphi_pad_token, cfg.delphi_ctx_multiple)
    con = connect(db, read_only=True, wait=WAIT)
    try:
        require_shoggoth(con, db)
        harvest = delphi.read_harvest(con, db, delphi.harvested_sae(con, db, cfg.sae), options)
        built.mkdir()
        delphi.write_cache(con, harvest, built, options)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    finally:
        con.close()
    return harvest


def plan_neuronpedia(cfg: ExportConfig, db: Path) -> neuronpedia.Plan:
    """The SAE --neuronpedia exports and its Neuronpedia model and source, checked before any
    export is built (BadInput in one line: no harvest, no index, no Neuronpedia id nor
    flags)."""
    con = connect(db, read_only=True, wait=WAIT)
    try:
        require_shoggoth(con, db)
        return neuronpedia.plan(
            con, db, cfg.sae, cfg.neuronpedia_model, cfg.neuronpedia_source, cfg.neuronpedia_creator
        )
    except duckdb.Error as e:
        raise BadInput(f"--db {db}: cannot be exported to Neuronpedia: {first_line(e)}") from None
    finally:
        con.close()


def build_neuronpedia(db: Path, plan: neuronpedia.Plan, built: Path) -> neuronpedia.Written:
    """The Neuronpedia export of `plan` in the new folder `built` (see
    index/store/neuronpedia.py); returns what it holds. The connection may write only into
    `built`; on any failure it is removed."""
    con = connect(db, read_only=True, wait=WAIT, folders=[built])
    try:
        require_shoggoth(con, db)
        built.mkdir()
        return neuronpedia.write_export(con, db, plan, built)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    finally:
        con.close()


def clear_leftovers(out: Path, marker: str = MANIFEST) -> None:
    """Remove what killed exports to `out` left beside it: folders being built, and an old
    export swapped aside (put back first when the kill came before the new one was in place;
    `marker`: the file every complete export of its kind holds)."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        if not out.exists() and (old / marker).is_file():
            os.replace(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
