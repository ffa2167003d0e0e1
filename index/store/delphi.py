"""`shoggoth export --delphi DIR`: one SAE's harvest as the latent cache of EleutherAI's delphi,
so its explainers and scorers run on the battery's documents without running the model again.

The layout is the one delphi's `LatentCache.save_splits` and `save_config` write, and what its
`LatentDataset(raw_dir=DIR/latents, …)` reads:

    DIR/latents/{hook}/{start}_{end}.safetensors   one file per split of the latents
        locations    N × 3 [row, pos, latent − start], sorted; uint16 when every value is below
                     2**16, else uint32 (delphi checks row and latent; pos is checked here too)
        activations  N float16
        tokens       rows × ctx int64: every row's token ids (the same array in every split)
    DIR/latents/{hook}/config.json   delphi's CacheConfig keys, `ctx_len` (its loader's name
                                     for cache_ctx_len) and `model_name`
    DIR/rows.parquet                 row → sae_id, persona, paraphrase, item_id, n_tokens

A row is one harvested document (persona × paraphrase × item), in the database's order
(personas and items in battery order). Its tokens are the item's measured answer tokens
(`tokens.token_id`: the harvest measures only the answer, whose tokens are the same under every
persona), padded with --delphi-pad-token up to ctx, the longest answer rounded up to a multiple
of --delphi-ctx-multiple (delphi cuts rows into windows of its example_ctx_len, which must
divide ctx). The system prompt that makes the persona is not in the tokens: rows.parquet names
it, so delphi's per-latent results can be read back by persona. `pos` is the position within
the answer (`activations.pos`). Splits cover the latents [start, end] (inclusive) from
`torch.linspace(0, d_sae, n_splits + 1).long()`, computed here as torch does (float32).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from shoggoth.core.errors import BadInput
from shoggoth.core.names import shown_name
from shoggoth.index.store.database import tables

ROWS_FILE = "rows.parquet"
"""The side table naming each row's document; also what marks a folder as a delphi export."""
LATENTS = "latents"
"""The folder delphi's LatentDataset reads (`raw_dir`)."""
BATCH_SIZE = 32
"""config.json's batch_size: delphi's default (the cache was not made in batches)."""

ROWS = """
    WITH rows AS (
        SELECT (row_number() OVER (ORDER BY persona, paraphrase, item_id) - 1)::BIGINT AS row,
               persona, paraphrase, item_id, n_tokens
        FROM documents WHERE sae_id = $sae)
"""
"""The cache's rows: the SAE's documents numbered from 0 in (persona, paraphrase, item) order."""


@dataclass(frozen=True)
class CacheOptions:
    """What the export asks of the cache: its --delphi-* flags."""

    splits: int
    """How many files the latents are split into (delphi's n_splits)."""
    pad_token: int
    """The token id that fills a row after its answer."""
    ctx_multiple: int
    """The rows' length is the longest answer rounded up to a multiple of this."""


@dataclass(frozen=True)
class Harvest:
    """One SAE's harvest, checked, as the cache is built from it."""

    sae_id: str
    """The SAE (`saes.sae_id`)."""
    hook: str
    """Its hook: the cache's module folder, `latents/{hook}`."""
    model: str
    """The model as the harvest was given it (`saes.model`: an alias, directory or hub id)."""
    model_name: str
    """What delphi loads the tokenizer from when none is passed: `saes.model_source` (where the
    model's files were read), else `saes.model`."""
    width: int
    """The SAE's number of latents (`saes.d_sae`)."""
    rows: int
    """Its harvested documents: the cache's rows."""
    ctx: int
    """Tokens per row."""
    activations: int
    """Its stored activations; each lands in exactly one split."""


@dataclass(frozen=True)
class Split:
    """One file of the cache: the activations of latents start..end (inclusive)."""

    start: int
    """The first latent."""
    end: int
    """The last latent (inclusive, as in the file name)."""
    locations: NDArray[np.unsignedinteger]
    """N × 3 [row, pos, latent − start], sorted, uint16 or uint32."""
    activations: NDArray[np.float16]
    """N values, float16."""


def one(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, object]) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    rows = con.execute(sql, params).fetchall()  # (all: the result is finished)
    assert len(rows) == 1  # (an aggregate without GROUP BY returns one row)
    return tuple(rows[0])


def harvested_sae(con: duckdb.DuckDBPyConnection, db: Path, sae: str | None) -> str:
    """The SAE to export: `sae` when it has harvested documents, else the only such SAE;
    BadInput in one line otherwise (naming the SAEs there are)."""
    harvested = (
        [
            r[0]
            for r in con.execute("SELECT DISTINCT sae_id FROM documents ORDER BY sae_id").fetchall()
        ]
        if "documents" in tables(con)
        else []
    )
    listed = ", ".join(shown_name(s) for s in harvested[:8]) + (", …" if len(harvested) > 8 else "")
    if sae is not None:
        if sae not in harvested:
            known = f"its harvested SAEs: {listed}" if harvested else "it holds no harvest"
            raise BadInput(
                f"--sae {shown_name(sae)}: no harvest of that SAE in --db {db} ({known})"
            )
        return sae
    if not harvested:
        raise BadInput(f"--db {db}: holds no harvest (no documents); nothing for --delphi")
    if len(harvested) > 1:
        raise BadInput(
            f"--sae: --db {db} holds {len(harvested)} harvested SAEs ({listed}); "
            "choose one for --delphi"
        )
    return str(harvested[0])


def module_folder(hook: object, sae_id: str) -> str:
    """`hook` as the cache's module folder name; BadInput when it is not one plain name (a
    separator, `..`, a control character: it would write elsewhere)."""
    if (
        not isinstance(hook, str)
        or hook in ("", ".", "..")
        or re.search(r"[/\\\x00-\x1f\x7f]", hook)
    ):
        raise BadInput(
            f"--sae {shown_name(sae_id)}: its hook '{shown_name(hook)}' is not a "
            "plain folder name; delphi's cache is named after it"
        )
    return hook


def read_harvest(
    con: duckdb.DuckDBPyConnection, db: Path, sae_id: str, options: CacheOptions
) -> Harvest:
    """The SAE's harvest, checked before anything is written: one plain hook, a width the
    splits fit, unique documents whose answer tokens are all in `tokens`, and activations
    inside the width and the answers. BadInput in one line naming what is wrong."""
    where = f"--db {db}: SAE '{shown_name(sae_id)}'"
    sae = con.execute(
        "SELECT hook, model, model_source, d_sae FROM saes WHERE sae_id = ?", [sae_id]
    ).fetchall()
    if len(sae) != 1:
        raise BadInput(f"{where}: has documents but {len(sae)} rows in saes, not one")
    hook, model, source, width = sae[0]
    hook = module_folder(hook, sae_id)
    if type(width) is not int or width < 1:
        raise BadInput(f"{where}: its d_sae '{shown_name(width)}' is not a positive integer")
    if options.splits > width:
        raise BadInput(f"--delphi-splits {options.splits}: more than the SAE's {width} latents")
    rows, keys, longest = one(
        con,
        "SELECT count(*), count(DISTINCT (persona, paraphrase, item_id)), "
        "coalesce(max(n_tokens), 0) FROM documents WHERE sae_id = $sae",
        {"sae": sae_id},
    )
    if rows != keys:
        raise BadInput(f"{where}: a document is stored more than once in documents")
    check_tokens(con, where, sae_id)
    count = count_activations(con, where, sae_id, width, longest)
    ctx = max(1, -(-int(longest) // options.ctx_multiple)) * options.ctx_multiple
    return Harvest(sae_id, hook, str(model), str(source or model), width, int(rows), ctx, count)


def check_tokens(con: duckdb.DuckDBPyConnection, where: str, sae_id: str) -> None:
    """BadInput unless `tokens` holds every document's answer: positions 0..n_tokens − 1 of
    its item, each once."""
    uncovered = one(
        con,
        ROWS
        + """
        , answers AS (SELECT item_id, count(*) AS n, count(DISTINCT pos) AS k, min(pos) AS lo,
                             max(pos) AS hi
                      FROM tokens WHERE sae_id = $sae GROUP BY item_id)
        SELECT count(*) FROM rows LEFT JOIN answers USING (item_id)
        WHERE coalesce(answers.n, 0) <> rows.n_tokens
           OR (rows.n_tokens > 0 AND (answers.k <> answers.n OR answers.lo <> 0
                                      OR answers.hi <> rows.n_tokens - 1))""",
        {"sae": sae_id},
    )[0]
    if uncovered:
        raise BadInput(
            f"{where}: the tokens table does not hold the answer tokens of "
            f"{uncovered} of its documents; the cache needs every token id"
        )


def count_activations(
    con: duckdb.DuckDBPyConnection, where: str, sae_id: str, width: int, longest: int
) -> int:
    """The SAE's stored activations; BadInput when one names a latent outside the width or a
    position outside the longest answer (each split checks its own document's answer)."""
    count, lo, hi, first, last = one(
        con,
        "SELECT count(*), min(feature), max(feature), min(pos), max(pos) FROM activations "
        "WHERE sae_id = $sae",
        {"sae": sae_id},
    )
    if count and (lo < 0 or hi >= width):
        raise BadInput(
            f"{where}: an activation names latent {lo if lo < 0 else hi}, outside "
            f"its d_sae of {width}"
        )
    if count and (first < 0 or last >= longest):
        raise BadInput(f"{where}: an activation's position lies outside every answer")
    return int(count)


def split_bounds(width: int, n_splits: int) -> list[tuple[int, int]]:
    """delphi's splits of `width` latents: `torch.linspace(0, width, n_splits + 1).long()` as
    [start, end] pairs (end inclusive). torch computes a float32 linspace, the first half as
    step·i and the second as width − step·(steps − 1 − i) in one fused multiply-add on an
    x86-64 CPU; this does the same arithmetic (the product exact in float64, then one rounding
    to float32), so the boundaries and file names are the ones delphi writes (tested against
    torch for widths up to 2**24 and up to 100 splits)."""
    steps = n_splits + 1
    step = np.float32(np.float32(width) / np.float32(steps - 1))
    half = steps // 2
    values = [
        np.float32(step * np.float32(i))
        if i < half
        else np.float32(float(width) - float(step) * (steps - 1 - i))
        for i in range(steps)
    ]
    bounds = [int(v) for v in values]  # .long() truncates toward zero
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n_splits)]


def read_rows(con: duckdb.DuckDBPyConnection, sae_id: str) -> pa.Table:
    """rows.parquet's rows: each row's document, persona and item as text."""
    return con.sql(
        ROWS
        + """
        SELECT row, $sae::VARCHAR AS sae_id, persona::VARCHAR AS persona, paraphrase,
               item_id::VARCHAR AS item_id, n_tokens
        FROM rows ORDER BY row""",
        params={"sae": sae_id},
    ).to_arrow_table()


def read_tokens(
    con: duckdb.DuckDBPyConnection, harvest: Harvest, pad_token: int
) -> NDArray[np.int64]:
    """rows × ctx token ids: each row's answer tokens, then `pad_token`."""
    found = con.execute(
        ROWS
        + """
        SELECT rows.row, t.pos, t.token_id FROM rows
        JOIN tokens t ON t.sae_id = $sae AND t.item_id = rows.item_id
                         AND t.pos < rows.n_tokens""",
        {"sae": harvest.sae_id},
    ).fetchnumpy()
    tokens = np.full((harvest.rows, harvest.ctx), pad_token, dtype=np.int64)
    tokens[np.asarray(found["row"]), np.asarray(found["pos"])] = np.asarray(found["token_id"])
    return tokens


def locations_dtype(locations: NDArray[np.int64]) -> type[np.unsignedinteger]:
    """uint16 when every value fits (delphi's rule for row and latent − start; pos too),
    else uint32."""
    return np.uint16 if not locations.size or int(locations.max()) < 2**16 else np.uint32


def read_split(con: duckdb.DuckDBPyConnection, harvest: Harvest, start: int, end: int) -> Split:
    """The activations of latents start..end, located by row and position, sorted as delphi's
    cache is (row, pos, latent); BadInput when one lies past its document's answer."""
    found = con.execute(
        ROWS
        + """
        SELECT rows.row, a.pos, a.feature - $start AS latent, a.value, rows.n_tokens
        FROM activations a JOIN rows USING (persona, paraphrase, item_id)
        WHERE a.sae_id = $sae AND a.feature BETWEEN $start AND $end
        ORDER BY rows.row, a.pos, latent""",
        {"sae": harvest.sae_id, "start": start, "end": end},
    ).fetchnumpy()
    if (np.asarray(found["pos"]) >= np.asarray(found["n_tokens"])).any():
        raise BadInput(
            f"SAE '{shown_name(harvest.sae_id)}': an activation lies past the end "
            "of its document's answer"
        )
    locations = np.stack(
        [np.asarray(found[c], dtype=np.int64) for c in ("row", "pos", "latent")], axis=1
    ).reshape(-1, 3)
    return Split(
        start,
        end,
        locations.astype(locations_dtype(locations)),
        np.asarray(found["value"]).astype(np.float16),
    )


def cache_config(harvest: Harvest, options: CacheOptions) -> dict[str, object]:
    """config.json: the keys of delphi's CacheConfig, `ctx_len` (the key its LatentDataset
    reads) and `model_name`, plus what shoggoth exported. The dataset_* keys are empty: the
    tokens are in the cache, and rows.parquet names their documents."""
    return {
        "dataset_repo": "",
        "dataset_split": "",
        "dataset_name": "",
        "dataset_column": "",
        "batch_size": BATCH_SIZE,
        "cache_ctx_len": harvest.ctx,
        "ctx_len": harvest.ctx,
        "n_tokens": harvest.rows * harvest.ctx,
        "n_splits": options.splits,
        "model_name": harvest.model_name,
        "shoggoth": {
            "sae_id": harvest.sae_id,
            "hook": harvest.hook,
            "model": harvest.model,
            "width": harvest.width,
            "rows": harvest.rows,
            "pad_token": options.pad_token,
            "rows_file": ROWS_FILE,
        },
    }


def write_cache(
    con: duckdb.DuckDBPyConnection, harvest: Harvest, folder: Path, options: CacheOptions
) -> int:
    """The cache of `harvest` into `folder` (which exists and is empty): rows.parquet, then
    config.json and the split files under latents/{hook}. Returns the activations written;
    BadInput when they are not all of the harvest's (an activation of a document that is not
    in documents)."""
    from safetensors.numpy import save_file

    pq.write_table(read_rows(con, harvest.sae_id), folder / ROWS_FILE)
    module = folder / LATENTS / harvest.hook
    module.mkdir(parents=True)
    (module / "config.json").write_text(json.dumps(cache_config(harvest, options), indent=4))
    tokens = read_tokens(con, harvest, options.pad_token)
    written = 0
    for start, end in split_bounds(harvest.width, options.splits):
        split = read_split(con, harvest, start, end)
        save_file(
            {"locations": split.locations, "activations": split.activations, "tokens": tokens},
            str(module / f"{start}_{end}.safetensors"),
        )
        written += len(split.activations)
    if written != harvest.activations:
        raise BadInput(
            f"SAE '{shown_name(harvest.sae_id)}': {harvest.activations - written} "
            "of its activations belong to no document in documents"
        )
    return written
