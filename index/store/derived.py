"""Columns one table derives from another, kept consistent by the storage layer whichever
stage rewrites either table: the features table's causal summary comes from feature_effects,
so `label` (which rewrites features) and `effects` (which rewrites feature_effects) both call
`refresh_causal` in their own transaction, and neither stage writes the other's table."""

from __future__ import annotations

from shoggoth.index.store.connection import Connection
from shoggoth.index.store.database import tables
from shoggoth.index.store.schema import add_feature_columns

CAUSAL_SQL = """
UPDATE features f SET causal = b.summary, mediated = b.estimate, mediated_persona = b.persona
FROM (
  SELECT m.feature, m.persona, m.estimate,
    CASE WHEN m.ci_low > 0 THEN
      printf('mediates %.0f%% [%.0f%%, %.0f%%] of %s''s shift of the answer (ablation KL %.2g)',
             100 * m.estimate, 100 * m.ci_low, 100 * m.ci_high, m.persona,
             coalesce(k.estimate, 0))
    ELSE
      printf('no mediation shown (largest: %s, %.0f%% [%.0f%%, %.0f%%]; ablation KL %.2g)',
             m.persona, 100 * m.estimate, 100 * m.ci_low, 100 * m.ci_high,
             coalesce(k.estimate, 0))
    END AS summary
  FROM (SELECT *, row_number() OVER (PARTITION BY feature ORDER BY estimate DESC NULLS LAST,
                                     persona) AS r
        FROM feature_effects WHERE sae_id = $sae AND measure = 'mediated') m
  LEFT JOIN feature_effects k ON k.sae_id = $sae AND k.feature = m.feature
       AND k.persona = m.persona AND k.measure = 'ablate_kl'
  WHERE m.r = 1) b
WHERE f.sae_id = $sae AND f.feature = b.feature
"""


def refresh_causal(con: Connection, sae_id: str) -> None:
    """Fill the features table's causal summary of one SAE from feature_effects (inside the
    caller's transaction; nothing to do before both tables exist)."""
    have = tables(con)
    if "features" not in have or "feature_effects" not in have:
        return
    add_feature_columns(con)
    con.execute(
        "UPDATE features SET causal = NULL, mediated = NULL, mediated_persona = NULL "
        "WHERE sae_id = ?",
        [sae_id],
    )
    con.execute(CAUSAL_SQL, {"sae": sae_id})
