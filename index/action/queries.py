"""The reads of the tables `shoggoth generate` and `grid` write (answers, grid_*)."""

from __future__ import annotations

import pandas as pd

from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import (
    has_table,
    if_table,
    with_names,
)


def answer_sets(con: Connection) -> pd.DataFrame:
    """The finished answer sets (`shoggoth generate`), with their model and settings."""
    return if_table(
        con,
        "answer_sets",
        "SELECT * EXCLUDE (run_id, status) FROM answer_sets "
        "WHERE status = 'finished' ORDER BY answer_set",
        [],
    )


def persona_answers(con: Connection, answer_set: str, persona: str) -> pd.DataFrame:
    """A persona's own answers beside the battery's neutral ones: item_id, paraphrase, question,
    neutral, own, stop_reason."""
    return if_table(
        con,
        "answers",
        """
        SELECT a.item_id, a.paraphrase, i.question, i.answer AS neutral, a.text AS own,
               a.stop_reason
        FROM answers a JOIN items i ON i.item_id::VARCHAR = a.item_id
        WHERE a.answer_set = ? AND a.persona = ? ORDER BY a.item_id, a.paraphrase""",
        [answer_set, persona],
    )


def grid_summary(con: Connection, sae_id: str) -> pd.DataFrame:
    """Per answer set and grid label: features, and the estimated FDR of the effect labels."""
    return if_table(
        con,
        "grid_features",
        """
        SELECT g.answer_set, g.neutral, g.grid_label AS label, count(*) AS features,
               any_value(r.n_null) AS n_null, any_value(r.fdr) AS fdr
        FROM grid_features g LEFT JOIN grid_fdr r ON r.sae_id = g.sae_id
             AND r.answer_set = g.answer_set AND r.neutral = g.neutral AND r.label = g.grid_label
        WHERE g.sae_id = ? GROUP BY ALL ORDER BY g.answer_set, g.neutral, features DESC""",
        [sae_id],
    )


def grid_feature(con: Connection, sae_id: str, feature: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A feature's grid label and tests per answer set, and its per-persona cells and effects
    (both empty before `shoggoth grid`)."""
    where = "WHERE sae_id = ? AND feature = ?"
    return (
        if_table(
            con,
            "grid_features",
            f"SELECT * EXCLUDE (sae_id) FROM grid_features {where} ORDER BY answer_set, neutral",
            [sae_id, feature],
        ),
        if_table(
            con,
            "grid_effects",
            f"SELECT * EXCLUDE (sae_id, feature) FROM "
            f"grid_effects {where} ORDER BY answer_set, neutral, persona",
            [sae_id, feature],
        ),
    )


def grid_runs(con: Connection, sae_id: str) -> pd.DataFrame:
    """The (answer_set, neutral) pairs `shoggoth grid` has analysed for this SAE."""
    return if_table(
        con,
        "grid_fdr",
        "SELECT DISTINCT answer_set, neutral FROM grid_fdr WHERE sae_id = ? ORDER BY ALL",
        [sae_id],
    )


def persona_content_features(
    con: Connection, sae_id: str, answer_set: str, neutral: str, persona: str, limit: int
) -> pd.DataFrame:
    """The features the persona's own answers move most against the neutral ones (its content
    effect, in log units, largest |effect| / interval first), both directions, with the grid
    label and the persona label."""
    labels = has_table(con, "feature_labels")
    return if_table(
        con,
        "grid_effects",
        f"""
        SELECT e.feature, e.content, e.content_low, e.content_high, e.in_action,
               e.neutral_text, g.grid_label, {"l.label" if labels else "NULL"} AS label
        FROM grid_effects e JOIN grid_features g USING (sae_id, answer_set, neutral, feature)
        {"LEFT JOIN feature_labels l USING (sae_id, feature)" if labels else ""}
        WHERE e.sae_id = ? AND e.answer_set = ? AND e.neutral = ? AND e.persona = ?
              AND (e.content_low > 0 OR e.content_high < 0)
        ORDER BY abs(e.content) / greatest(e.content_high - e.content_low, 1e-9) DESC
        LIMIT ?""",
        [sae_id, answer_set, neutral, persona, limit],
    ).pipe(lambda f: with_names(con, sae_id, f))
