"""The database side of `shoggoth explain`: which features to explain, their example windows
(tokens with the feature's activation on each), and the explanations with their scores.

Each feature's explanation is written in its own short transaction, with the connection opened
only for it, so a long run holds no lock between features and an interrupted run keeps every
feature it finished.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.errors import BadInput
from shoggoth.index.catalog.handles import CLEAN
from shoggoth.index.labels.rules import PERSONA_LABELS
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import connect, tables, transaction
from shoggoth.index.store.schema import create_index_tables

WINDOWS_SQL = f"""
WITH e AS (SELECT feature, kind, rank, persona, paraphrase, item_id, pos, value
           FROM examples WHERE sae_id = $sae AND feature IN (SELECT unnest($features))),
w AS (SELECT e.*, t.pos AS tpos, {CLEAN.format(x="t.token")} AS token
      FROM e JOIN tokens t ON t.sae_id = $sae AND t.item_id = e.item_id
                          AND t.pos BETWEEN e.pos - $width AND e.pos + $width)
SELECT w.feature, w.kind, w.rank, w.persona, w.paraphrase, w.item_id, w.pos, w.value, w.tpos,
       w.token, coalesce(a.value, 0) AS act
FROM w LEFT JOIN activations a ON a.sae_id = $sae AND a.feature = w.feature
     AND a.persona = w.persona AND a.paraphrase = w.paraphrase AND a.item_id = w.item_id
     AND a.pos = w.tpos
ORDER BY w.feature, w.kind, w.rank, w.persona, w.paraphrase, w.item_id, w.pos, w.tpos
"""


def choose_features(
    con: Connection, sae_id: str, wanted: list[int] | None, limit: int, min_places: int = 1
) -> list[int]:
    """`wanted` (live features only), or up to `limit` features that can be scored: firing in
    at least `min_places` distinct places among their examples, and never in some answers
    (detection's silent windows). Those whose label names a persona come first, then the most
    distinctive handles."""
    if "examples" not in tables(con):
        raise BadInput(f"'{sae_id}': no examples yet; run `shoggoth index` first")
    live = {
        f
        for (f,) in con.execute(
            "SELECT DISTINCT feature FROM examples WHERE sae_id = ?", [sae_id]
        ).fetchall()
    }
    if wanted is not None:
        dead = [f for f in wanted if f not in live]
        if dead:
            raise BadInput(
                f"--features {dead[0]}: never fires in this harvest (nothing to explain)"
            )
        return wanted
    have = tables(con)
    labels, handles = "features" in have, "feature_handles" in have
    rows = con.execute(
        f"""
        WITH places AS (SELECT feature, count(DISTINCT (item_id, pos)) AS n FROM examples
                        WHERE sae_id = $sae GROUP BY feature),
        somewhere AS (SELECT feature FROM doc_features WHERE sae_id = $sae GROUP BY feature
                      HAVING count(DISTINCT item_id) < (SELECT count(*) FROM items))
        SELECT p.feature FROM places p JOIN somewhere USING (feature)
        {"LEFT JOIN features f ON f.sae_id = $sae AND f.feature = p.feature" if labels else ""}
        {
            "LEFT JOIN feature_handles h ON h.sae_id = $sae AND h.feature = p.feature"
            if handles
            else ""
        }
        WHERE p.n >= $min
        ORDER BY {f"f.label IN {PERSONA_LABELS} DESC NULLS LAST," if labels else ""}
                 {"coalesce(h.best_score, 0) DESC," if handles else ""} p.n DESC, p.feature
        LIMIT $limit""",
        {"sae": sae_id, "min": min_places, "limit": limit},
    ).fetchall()
    return [f for (f,) in rows]


def windows(con: Connection, sae_id: str, features: list[int], width: int) -> pd.DataFrame:
    """Every stored example of `features` as token rows: feature, kind, rank, persona,
    paraphrase, item_id, pos, value, tpos, token, act (this feature on that token)."""
    return con.execute(WINDOWS_SQL, {"sae": sae_id, "features": features, "width": width}).df()


def silent_items(con: Connection, sae_id: str, feature: int) -> list[str]:
    """Items whose answer the feature never fires on, under any persona."""
    return [
        i
        for (i,) in con.execute(
            """
        SELECT item_id FROM items WHERE item_id NOT IN (
            SELECT DISTINCT item_id FROM doc_features WHERE sae_id = ? AND feature = ?)
        ORDER BY item_id""",
            [sae_id, feature],
        ).fetchall()
    ]


def item_tokens(con: Connection, sae_id: str, items: list[str]) -> dict[str, list[str]]:
    """Each item's answer tokens, readable."""
    rows = con.execute(
        f"SELECT item_id, {CLEAN.format(x='token')} FROM tokens WHERE "
        "sae_id = ? AND item_id IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY item_id, pos",
        [sae_id, items],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for item, token in rows:
        out.setdefault(item, []).append(token)
    return out


def silent_windows(
    con: Connection, sae_id: str, feature: int, n: int, width: int, seed: int
) -> list[tuple[str, list[str]]]:
    """`n` windows (item, tokens) of 2·width + 1 tokens from answers the feature never fires
    on, at seeded random places."""
    items = silent_items(con, sae_id, feature)
    rng = random.Random(seed * 1_000_003 + feature)
    chosen = rng.sample(items, min(n, len(items)))
    tokens = item_tokens(con, sae_id, chosen)
    out = []
    for item in chosen:
        toks = tokens.get(item, [])
        if not toks:
            continue
        centre = rng.randrange(len(toks))
        out.append((item, toks[max(0, centre - width) : centre + width + 1]))
    return out


def persona_means(con: Connection, sae_id: str, feature: int) -> list[tuple[str, float]]:
    if "feature_personas" not in tables(con):
        return []
    return [
        (p, float(m))
        for p, m in con.execute(
            "SELECT persona, mean_act FROM feature_personas fp JOIN personas USING (persona) "
            "WHERE sae_id = ? AND feature = ? AND NOT is_control ORDER BY mean_act DESC, persona",
            [sae_id, feature],
        ).fetchall()
    ]


def settings_key(settings: dict[str, Any]) -> str:
    """The settings as stored with each explanation (`settings_json`)."""
    return json.dumps(settings, sort_keys=True)


def done_features(con: Connection, sae_id: str, key: str) -> set[int]:
    """Features already explained with the settings `key` (a rerun skips them)."""
    if "feature_explanations" not in tables(con):
        return set()
    return {
        f
        for (f,) in con.execute(
            "SELECT feature FROM feature_explanations WHERE sae_id = ? AND settings_json = ?::JSON",
            [sae_id, key],
        ).fetchall()
    }


def write_explanation(db: Path, sae_id: str, row: dict[str, Any]) -> None:
    """Replace one feature's explanation, in one transaction."""
    con = connect(db)
    try:
        with transaction(con):
            create_index_tables(con)  # (feature_explanations, and the names view)
            con.execute(
                "DELETE FROM feature_explanations WHERE sae_id = ? AND feature = ?",
                [sae_id, row["feature"]],
            )
            con.execute(
                """
                INSERT INTO feature_explanations BY NAME
                SELECT $sae AS sae_id, $feature AS feature, $explanation AS explanation,
                       $explainer AS explainer, $scorer AS scorer, $detection AS detection,
                       $detection_n AS detection_n, $detection_hits AS detection_hits,
                       $fuzzing AS fuzzing, $fuzzing_n AS fuzzing_n,
                       $fuzzing_hits AS fuzzing_hits, $n_shown AS n_shown,
                       $settings_json::JSON AS settings_json, now()::TIMESTAMP AS created_at""",
                {"sae": sae_id, **row},
            )
    finally:
        con.close()
