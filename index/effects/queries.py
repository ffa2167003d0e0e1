"""The reads of the tables `shoggoth effects` writes (feature_effects, persona_shifts), and the
features' typical activations it and `steer` scale by."""

from __future__ import annotations

from typing import Any

import pandas as pd

from shoggoth.core.printing import number
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.read import (
    has_table,
    if_table,
    with_names,
)


def feature_effects(con: Connection, sae_id: str, feature: int) -> pd.DataFrame:
    """A feature's causal measures per persona (empty before `shoggoth effects` or when it was
    not measured): persona, measure, estimate, ci_low, ci_high, n, role."""
    return if_table(
        con,
        "feature_effects",
        "SELECT persona, measure, estimate, ci_low, ci_high, n, role "
        "FROM feature_effects WHERE sae_id = ? AND feature = ? "
        "ORDER BY measure, persona",
        [sae_id, feature],
    )


def persona_shifts(con: Connection, sae_id: str) -> pd.DataFrame:
    """Each persona's shift of the answer's log-probability against no persona (mean over items
    of the summed per-token change, with its interval)."""
    return if_table(
        con,
        "persona_shifts",
        "SELECT * EXCLUDE (sae_id) FROM persona_shifts WHERE sae_id = ? ORDER BY persona",
        [sae_id],
    )


def persona_composition(con: Connection, sae_id: str, persona: str | None = None) -> pd.DataFrame:
    """The causal composition test (empty before `shoggoth effects` on a labelled database):
    persona, test (steer or ablate), part, share, ci_low, ci_high, n_items."""
    only = "" if persona is None else " AND persona = $persona"
    params: dict[str, Any] = {"sae": sae_id} | ({} if persona is None else {"persona": persona})
    return if_table(
        con,
        "persona_composition",
        "SELECT * EXCLUDE (sae_id) FROM persona_composition WHERE sae_id = $sae"
        f"{only} ORDER BY persona, test DESC, part",
        params,
    )


def composition_answer(rows: pd.DataFrame) -> str:
    """One persona's composition test in one line."""
    got = {(r.test, r.part): r for r in rows.itertuples()}

    def share(test: str, part: str) -> str:
        r = got.get((test, part))
        if r is None or number(r.share) is None:
            return "n/a"
        return f"{r.share:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"

    persona = rows["persona"].iloc[0]
    return (
        f"{persona}: the common pattern with its own modulation, steered into the reference, "
        f"reproduces {share('steer', 'common+own')} of its effect (the common pattern "
        f"alone {share('steer', 'common')}, its own modulation alone "
        f"{share('steer', 'own')}, the whole shift {share('steer', 'shift')}); replacing "
        f"its own modulation by the common pattern removes {share('ablate', 'own')} "
        f"(in features of its own: {share('ablate', 'own_features')})"
    )


def mediation_summary(con: Connection, sae_id: str) -> pd.DataFrame:
    """Per measured feature: its role, label and best persona's mediated fraction with its
    interval, and its steering toward that persona (empty before `shoggoth effects`)."""
    labels = (
        "(SELECT feature, label FROM feature_labels WHERE sae_id = $sae)"
        if has_table(con, "feature_labels")
        else "(SELECT NULL::INTEGER AS feature, NULL::VARCHAR AS label)"
    )
    return if_table(
        con,
        "feature_effects",
        f"""
        WITH m AS (SELECT *, row_number() OVER (PARTITION BY feature ORDER BY estimate DESC
                                                NULLS LAST, persona) AS r
                   FROM feature_effects WHERE sae_id = $sae AND measure = 'mediated')
        SELECT m.feature, m.role, l.label, m.persona, m.estimate AS mediated, m.ci_low,
               m.ci_high, s.estimate AS steer_toward, s.ci_low AS steer_low,
               s.ci_high AS steer_high
        FROM m LEFT JOIN feature_effects s ON s.sae_id = $sae AND s.feature = m.feature
             AND s.persona = m.persona AND s.measure = 'steer_toward'
        LEFT JOIN {labels} l ON l.feature = m.feature
        WHERE m.r = 1 ORDER BY m.role, m.estimate DESC""",
        {"sae": sae_id},
    ).pipe(lambda f: with_names(con, sae_id, f))


TYPICAL_SQL = """
WITH per AS (
  SELECT df.feature, df.persona, sum(df.mean_act * d.n_tokens) / sum(df.n_fire) AS firing,
         sum(df.mean_act) AS total
  FROM doc_features df JOIN documents d USING (sae_id, persona, paraphrase, item_id)
  JOIN personas p USING (persona)
  WHERE df.sae_id = $sae AND NOT p.is_control {only}
  GROUP BY df.feature, df.persona)
SELECT feature, arg_max(firing, total) AS typical FROM per GROUP BY feature ORDER BY feature"""


def typical_activations(
    con: Connection, sae_id: str, feature: int | None = None
) -> dict[int, float]:
    """Per feature: its mean activation on the answer tokens where it fires, under the persona
    where its mean activation is highest (what steering adds; absent: it never fired under a
    persona)."""
    only = "" if feature is None else "AND df.feature = $f"
    params: dict[str, Any] = {"sae": sae_id} | ({} if feature is None else {"f": feature})
    return {
        int(f): float(v) for f, v in con.execute(TYPICAL_SQL.format(only=only), params).fetchall()
    }
