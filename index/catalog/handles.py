"""Feature handles: a few words per feature, computed from the harvest alone (no model, no
network), so that a feature is never just a number.

A feature's handle is the tokens and two-token phrases that carry most of its activation mass
*beyond their base rate* in the battery. For a term t (a token, or a token with the one before
it) and feature f:

    share(f, t) = Σ activations of f on t / Σ activations of f      (where f puts its mass)
    base(t)     = occurrences of t / measured tokens                  (how common t is)
    score(f, t) = share · ln(share / base)                            (t's term of KL(share‖base))

A word that f fires on as often as it occurs ("the" for a feature that fires everywhere) scores
about 0, a rare word that takes much of f's mass scores high. A term must occur in at least
`min_items` different answers, so that one answer's odd token is not a name. A feature whose
best term explains little (score below `min_score`) is `diffuse`, which is said rather than
hidden. Only terms scoring at least a quarter of the best are kept, and a word is dropped for a
better phrase holding it ("sea" under "the sea"), as is a phrase around a better word ("in the"
for "the"). The persona a feature prefers comes from its label at read time (`feature_names`).
"""

from __future__ import annotations

from shoggoth.index.store.connection import Connection, one_row

HANDLE_TERMS = 3
"""Terms per handle."""
MIN_ITEMS = 2
"""Different answers a term must occur in (under the feature) to name it."""
MIN_SCORE = 0.05
"""Below this best score a feature is `diffuse`."""

# Token spellings of byte-level BPE (GPT-2, SmolLM2) and SentencePiece, made readable.
CLEAN = "replace(replace(replace(replace({x}, 'Ġ', ' '), 'Ċ', '⏎'), '▁', ' '), '##', '')"

HANDLES_SQL = f"""
INSERT INTO feature_handles
WITH tok AS (SELECT item_id, pos, token,
                    lag(token) OVER (PARTITION BY item_id ORDER BY pos) AS prev
             FROM tokens WHERE sae_id = $sae),
terms AS (SELECT item_id, pos, token AS term, 1 AS n FROM tok
          UNION ALL
          SELECT item_id, pos, prev || token, 2 FROM tok WHERE prev IS NOT NULL),
docs AS (SELECT item_id, count(*) AS n_docs FROM documents WHERE sae_id = $sae
         GROUP BY item_id),
base AS (SELECT term, n, sum(d.n_docs) AS occurrences
         FROM terms JOIN docs d USING (item_id) GROUP BY term, n),
total AS (SELECT sum(occurrences) AS tokens FROM base WHERE n = 1),
fired AS (SELECT a.feature, t.term, t.n, sum(a.value) AS mass,
                 count(DISTINCT a.item_id) AS items
          FROM activations a JOIN terms t USING (item_id, pos)
          WHERE a.sae_id = $sae GROUP BY a.feature, t.term, t.n),
mass AS (SELECT feature, sum(mass) AS total FROM fired WHERE n = 1 GROUP BY feature),
scored AS (
    SELECT f.feature, f.term, f.n, f.mass / m.total AS share,
           b.occurrences / total.tokens AS base, f.items,
           share * ln(share / base) AS score
    FROM fired f JOIN mass m USING (feature) JOIN base b USING (term, n), total
    WHERE f.items >= $min_items AND trim({CLEAN.format(x="f.term")}) <> ''),
top AS (
    SELECT *, max(score) OVER (PARTITION BY feature) AS best
    FROM scored WHERE score > 0
    QUALIFY row_number() OVER (PARTITION BY feature ORDER BY score DESC, term) <= 10),
-- A term names the feature when it scores at least a quarter of the best and is not part of a
-- better phrase ("sea" under "the sea") or a phrase around a better word ("in the" for "the").
kept AS (
    SELECT a.* FROM top a
    WHERE a.score >= a.best / 4 AND NOT EXISTS (
        SELECT 1 FROM top b WHERE b.feature = a.feature AND b.score > a.score
               AND b.n <> a.n AND (starts_with(b.term, a.term) OR ends_with(b.term, a.term)
                                   OR starts_with(a.term, b.term) OR ends_with(a.term, b.term)))),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY feature ORDER BY score DESC, term) AS rank
    FROM kept QUALIFY rank <= $terms),
named AS (
    SELECT feature,
           list(trim({CLEAN.format(x="term")}) ORDER BY rank) AS terms,
           list(score ORDER BY rank) AS scores,
           list(share ORDER BY rank) AS shares,
           max(best) AS best
    FROM ranked GROUP BY feature)
SELECT $sae, m.feature,
       CASE WHEN n.best >= $min_score
            THEN array_to_string(list_transform(n.terms, lambda x: '“' || x || '”'), ' · ')
            ELSE 'diffuse' END AS handle,
       CASE WHEN n.best >= $min_score THEN n.terms ELSE [] END AS terms,
       coalesce(n.scores, []) AS scores,
       coalesce(n.shares, []) AS shares,
       coalesce(n.best, 0) AS best_score
FROM mass m LEFT JOIN named n USING (feature)
ORDER BY m.feature
"""


def write_handles(
    con: Connection,
    sae_id: str,
    terms: int = HANDLE_TERMS,
    min_items: int = MIN_ITEMS,
    min_score: float = MIN_SCORE,
) -> int:
    """Replace `sae_id`'s rows of `feature_handles` (inside the caller's transaction); returns
    how many features got a handle."""
    con.execute("DELETE FROM feature_handles WHERE sae_id = ?", [sae_id])
    con.execute(
        HANDLES_SQL, {"sae": sae_id, "terms": terms, "min_items": min_items, "min_score": min_score}
    )
    # (fetchall: a half-read result would block the frames registered next on `con`)
    return int(one_row(con, "SELECT count(*) FROM feature_handles WHERE sae_id = ?", [sae_id])[0])
