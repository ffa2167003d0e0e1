-- Example queries for `shoggoth sql --db FILE.duckdb "..."` (tables: docs/schema.md).
-- Each query is run by tests/index/test_sql.py against a real harvested and labelled database.

-- name: persona_label_counts
-- Persona x label: how many features each persona is the top persona of, by label.
SELECT argmax_persona AS persona, label, count(*) AS features
FROM features
WHERE argmax_persona IS NOT NULL
GROUP BY ALL
ORDER BY persona, label;

-- name: mask_specific_of_persona
-- The villain's mask-specific features, each with its 3 strongest activations in context
-- (8 tokens either side; the firing token in [[ ]]).
WITH chosen AS (
    SELECT sae_id, feature, top_share, set_ratio, q_value
    FROM features WHERE label = 'mask-specific' AND top_persona = 'villain'
), top AS (
    SELECT a.*, row_number() OVER (PARTITION BY a.sae_id, a.feature ORDER BY a.value DESC) AS rank
    FROM activations a JOIN chosen USING (sae_id, feature)
    QUALIFY rank <= 3
)
SELECT top.feature, n.name, top.rank, round(top.value, 3) AS value, top.persona, top.item_id,
       string_agg(CASE WHEN t.pos = top.pos THEN '[[' || t.token || ']]' ELSE t.token END, ' '
                  ORDER BY t.pos) AS context
FROM top JOIN tokens t ON t.sae_id = top.sae_id AND t.item_id = top.item_id
     AND t.pos BETWEEN top.pos - 8 AND top.pos + 8
LEFT JOIN feature_names n ON n.sae_id = top.sae_id AND n.feature = top.feature
GROUP BY ALL
ORDER BY top.feature, top.rank;

-- name: features_named
-- Features by name: every feature whose handle (the words it fires on beyond their base rate),
-- preferred persona or explanation mentions rain, most distinctive first, with its label.
SELECT n.sae_id, n.feature, n.name, n.label, n.explanation, round(n.detection, 2) AS detection
FROM feature_names n JOIN feature_handles h USING (sae_id, feature)
WHERE n.name ILIKE '%rain%' OR n.explanation ILIKE '%rain%'
ORDER BY h.best_score DESC
LIMIT 50;

-- name: shared_by_every_persona
-- Features shared by every persona (positive evidence of equivalence), most frequent first.
SELECT sae_id, feature, round(density, 4) AS density, round(mean_act, 4) AS mean_act,
       fire_frac_personas, round(ratio_ci_high, 3) AS ratio_ci_high
FROM features
WHERE label = 'shared'
ORDER BY density DESC
LIMIT 50;

-- name: persona_mean_of_feature
-- One feature's mean activation per persona (controls included), strongest first.
SELECT persona, round(mean_act, 4) AS mean_act, round(fire_rate, 3) AS fire_rate,
       round(delta_vs_rest, 4) AS delta_vs_rest
FROM feature_personas
WHERE feature = (SELECT feature FROM features WHERE label <> 'dead' ORDER BY density DESC LIMIT 1)
ORDER BY mean_act DESC;

-- name: calibration
-- How many features get each persona label when no persona effect can exist (prompts
-- reassigned to random personas; every persona split in two), against the real run.
SELECT sae_id, run, label, n
FROM calibration
WHERE label IN ('mask-specific', 'persona-concept', 'mask-or-concept', 'mask-family')
ORDER BY sae_id, run, label;

-- name: label_fdr
-- Every label with its real count, its null counts and its estimated false-discovery rate.
SELECT sae_id, label, n_real, n_null, n_split, round(fdr, 4) AS fdr
FROM label_fdr
ORDER BY sae_id, n_real DESC;

-- name: mask_general
-- Features shared by every persona but (nearly) absent without one: the "there is a mask" features.
SELECT feature, round(density, 4) AS density, round(no_mask_ratio, 3) AS no_mask_ratio,
       round(ratio_ci_high, 3) AS ratio_ci_high, round(shared_power, 3) AS power
FROM features
WHERE label = 'mask-general'
ORDER BY density DESC;
