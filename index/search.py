"""`shoggoth search`: find features by text (run through the model and SAE), by similarity to a
feature (FAISS over decoder directions), or by persona (its persona vector and mask-specific
features). Every result carries the feature's label (a manual label wins over the automatic one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.database import choose_sae, connect, load_harvest_sae, require_shoggoth, tables
from sae.errors import BadInput


@dataclass
class SearchConfig:
    """`shoggoth search`: find features by text, by similarity or by persona."""

    db: Path | None = None
    """The feature database (labels from `shoggoth label`, FAISS and persona vectors from
    `shoggoth index`)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    text: str | None = None
    """Run this text through the model and SAE and show the features it activates."""
    persona: str | None = None
    """With --text: run the text under this persona's system prompt. Alone: the features
    nearest to the persona's vector and its mask-specific features."""
    paraphrase: int = 0
    """With --text --persona: which of the persona's prompts to use (0 = the first)."""
    feature: int | None = None
    """A feature: its label, statistics and top contexts (with --similar: its neighbours)."""
    similar: bool = False
    """With --feature: the nearest features by decoder direction (FAISS)."""
    top: int = 10
    """Features shown per token, overall, per list or as neighbours."""
    json: bool = False
    """Print JSON instead of tables."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N (for --text)."""


MASK_FEATURES_SQL = """
SELECT l.feature, l.label, f.top_share, f.auroc, f.q_value
FROM feature_labels l JOIN features f USING (sae_id, feature)
WHERE l.sae_id = ? AND l.label IN ('mask-specific', 'mask-family')
  AND (l.top_persona = ? OR list_contains(string_split(l.family_set, ','), ?))
ORDER BY l.label DESC, f.auroc DESC LIMIT ?"""
"""A persona's mask-specific, then mask-family, features (labels in force), by AUROC;
parameters: sae_id, persona, persona, limit."""


class Dictionary:
    """A read-only view of one SAE in a feature database: labels, FAISS, persona vectors."""

    def __init__(self, db: Path, sae: str | None = None, con: Any = None) -> None:
        """Opens `db` read-only, or reads through `con` (a cursor the caller owns)."""
        if con is None and not db.is_file():
            raise BadInput(f"--db {db}: no such file")
        self.db = db
        self.owned = con is None
        self.con = connect(db, read_only=True) if con is None else con
        require_shoggoth(self.con, db)
        self.sae_id, self.row = choose_sae(self.con, db, sae)
        self.tables = tables(self.con)
        self.labelled = bool(self.con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'feature_labels'").fetchone()[0])

    def close(self) -> None:
        if self.owned:
            self.con.close()

    def labels(self, features: list[int]) -> dict[int, dict[str, Any]]:
        """label, top_persona and density of each feature (label 'unlabelled' before
        `shoggoth label`)."""
        if not self.labelled:
            return {f: {"label": "unlabelled", "top_persona": None, "density": None}
                    for f in features}
        rows = self.con.execute("""
            SELECT l.feature, l.label, coalesce(l.top_persona, l.family_set), f.density
            FROM feature_labels l JOIN features f USING (sae_id, feature)
            WHERE l.sae_id = ? AND l.feature IN (SELECT unnest(?::INTEGER[]))""",
                                [self.sae_id, features]).fetchall()
        found = {f: {"label": lab, "top_persona": top, "density": dens}
                 for f, lab, top, dens in rows}
        return {f: found.get(f, {"label": "unlabelled", "top_persona": None, "density": None})
                for f in features}

    def check_feature(self, feature: int) -> None:
        if not 0 <= feature < self.row["d_sae"]:
            raise BadInput(f"--feature {feature}: out of range (the SAE '{self.sae_id}' has "
                           f"{self.row['d_sae']:,} features, 0 to {self.row['d_sae'] - 1})")

    def faiss_index(self, name: str = "decoder") -> Any:
        import faiss

        row = None
        if "faiss_indexes" in self.tables:
            row = self.con.execute("SELECT path FROM faiss_indexes WHERE sae_id = ? AND name = ?",
                                   [self.sae_id, name]).fetchone()
        if row is None or not Path(row[0]).is_file():
            raise BadInput(f"--db {self.db}: no {name} index for '{self.sae_id}'; run "
                           "`shoggoth index` first")
        return faiss.read_index(row[0])

    def personas(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT persona::VARCHAR FROM personas ORDER BY persona").fetchall()]

    def check_persona(self, persona: str) -> None:
        names = self.personas()
        if persona not in names:
            raise BadInput(f"--persona {persona}: not in this database's battery (it has "
                           f"{', '.join(names)})")


def similar(d: Dictionary, feature: int, k: int, index: Any = None) -> list[dict[str, Any]]:
    """The k features whose decoder directions are nearest (cosine) to `feature`'s (`index`:
    the decoder FAISS index, when the caller holds it already)."""
    d.check_feature(feature)
    index = index if index is not None else d.faiss_index("decoder")
    query = index.reconstruct(feature).reshape(1, -1)
    sims, ids = index.search(query, k + 1)
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True)
             if i != feature and i >= 0][:k]
    labels = d.labels([i for i, _ in pairs])
    return [{"feature": i, "cosine": round(s, 4), **labels[i]} for i, s in pairs]


def describe(d: Dictionary, feature: int, k: int) -> dict[str, Any]:
    """A feature's label, its deciding statistics and its top contexts."""
    d.check_feature(feature)
    out: dict[str, Any] = {"feature": feature, **d.labels([feature])[feature]}
    if "features" in d.tables:
        cur = d.con.execute("SELECT * FROM features WHERE sae_id = ? AND feature = ?",
                            [d.sae_id, feature])
        row = cur.fetchone()
        if row is not None:
            stats = dict(zip([c[0] for c in cur.description], row, strict=True))
            out["statistics"] = {key: stats[key] for key in (
                "label", "n_docs_firing", "fire_frac_personas",
                "top_share", "k_eff", "auroc", "q_value", "max_min_ratio", "density",
                "mean_act", "max_act")}
    if "examples" in d.tables:
        out["contexts"] = [{"rank": r, "value": v, "persona": p, "item_id": i, "context": c}
                           for r, v, p, i, c in d.con.execute(
            "SELECT rank, value, persona, item_id, context FROM example_contexts(?, ?) "
            "WHERE kind = 'top' ORDER BY rank LIMIT ?", [d.sae_id, feature, k]).fetchall()]
    return out


def by_persona(d: Dictionary, persona: str, k: int) -> dict[str, Any]:
    """The features nearest the persona vector, and the persona's mask-specific (and
    mask-family) features, strongest first."""
    d.check_persona(persona)
    if "persona_features" not in d.tables:
        raise BadInput(f"--db {d.db}: no persona vectors for '{d.sae_id}'; run "
                       "`shoggoth index` first")
    nearest = d.con.execute(
        "SELECT feature, cosine FROM persona_features WHERE sae_id = ? AND persona = ? "
        "ORDER BY rank LIMIT ?", [d.sae_id, persona, k]).fetchall()
    norm = d.con.execute("SELECT norm, relative_norm FROM persona_vectors WHERE sae_id = ? AND "
                         "persona = ?", [d.sae_id, persona]).fetchone()
    specific: list[tuple[Any, ...]] = []
    if "features" in d.tables:
        specific = d.con.execute(MASK_FEATURES_SQL, [d.sae_id, persona, persona, k]).fetchall()
    labels = d.labels([f for f, _ in nearest])
    return {
        "persona": persona,
        "vector_norm": None if norm is None else round(norm[0], 4),
        "relative_norm": None if norm is None else round(norm[1], 4),
        "nearest": [{"feature": f, "cosine": round(float(c), 4), **labels[f]}
                    for f, c in nearest],
        "mask_specific": [{"feature": f, "label": lab, "top_share": share, "auroc": auroc,
                           "q_value": q} for f, lab, share, auroc, q in specific],
    }


def load_runner(d: Dictionary, device: str = "auto") -> tuple[Any, Any]:
    """The model and SAE of the dictionary's harvest, ready to encode text."""
    from sae.models import load_model

    sae = load_harvest_sae(d.db, d.sae_id, d.row, device)
    sae.eval()
    return load_model(d.row["model"], device), sae


def by_text(d: Dictionary, text: str, persona: str | None, paraphrase: int, k: int,
            device: str = "auto", runner: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run `text` (under a persona's system prompt, or none) through the model and SAE: the top
    features of every token and of the whole text, and the full activation matrix
    (`activations`, [tokens, d_sae]). `runner`: (model, sae) when the caller holds them."""
    import torch

    from sae.activations import continuation_activations
    from sae.prompts import build_prompt, collate, pad_id

    if not text.strip():
        raise BadInput("--text: is empty")
    system = None
    if persona is not None:
        d.check_persona(persona)
        prompts = [r[0] for r in d.con.execute(
            "SELECT prompt FROM persona_prompts WHERE persona = ? ORDER BY paraphrase",
            [persona]).fetchall()]
        if not 0 <= paraphrase < len(prompts):
            raise BadInput(f"--paraphrase {paraphrase}: persona '{persona}' has "
                           f"{len(prompts)} prompts (0 to {len(prompts) - 1})")
        system = prompts[paraphrase]
    model, sae = runner if runner is not None else load_runner(d, device)
    template = "plain" if d.row["template"] == "plain" else "auto"
    prompt = build_prompt(model.tokenizer, system, None, text, template=template,
                          prepend_bos=model.prepend_bos)
    batch = collate([prompt], pad_id(model.tokenizer))
    with torch.inference_mode():
        x = continuation_activations(model, batch, d.row["hook"])
        f = sae.encode(x.to(sae.dtype)).float().cpu().numpy()
    tokens = model.tokenizer.convert_ids_to_tokens(prompt.continuation_ids)
    per_token = []
    for pos, (token, acts) in enumerate(zip(tokens, f, strict=True)):
        order = [int(j) for j in np.argsort(-acts)[:k] if acts[j] > 0]
        per_token.append({"pos": pos, "token": token,
                          "features": [(j, round(float(acts[j]), 4)) for j in order]})
    mean = f.mean(axis=0)
    overall = [int(j) for j in np.argsort(-mean)[:k] if mean[j] > 0]
    labels = d.labels(sorted({j for t in per_token for j, _ in t["features"]} | set(overall)))
    for t in per_token:
        t["features"] = [{"feature": j, "value": v, "label": labels[j]["label"]}
                         for j, v in t["features"]]
    return {
        "text": text, "persona": persona, "paraphrase": paraphrase if persona else None,
        "tokens": per_token, "activations": f,
        "overall": [{"feature": j, "mean_act": round(float(mean[j]), 4),
                     "max_act": round(float(f[:, j].max()), 4),
                     "n_tokens": int((f[:, j] > 0).sum()), **labels[j]} for j in overall],
    }


def search(cfg: SearchConfig) -> dict[str, Any]:
    """Run the search mode the flags ask for; returns its result as plain data."""
    if cfg.db is None:
        raise BadInput("--db: required")
    if cfg.top < 1:
        raise BadInput(f"--top {cfg.top}: must be >= 1")
    if cfg.text is not None and cfg.feature is not None:
        raise BadInput("--text and --feature: give one of them")
    if cfg.similar and cfg.feature is None:
        raise BadInput("--similar: needs --feature F")
    if cfg.text is None and cfg.feature is None and cfg.persona is None:
        raise BadInput("search: give --text \"...\", --feature F [--similar] or --persona P")
    if cfg.feature is not None and cfg.persona is not None:
        raise BadInput("--feature and --persona: give one of them")
    d = Dictionary(cfg.db, cfg.sae)
    try:
        if cfg.text is not None:
            found = by_text(d, cfg.text, cfg.persona, cfg.paraphrase, cfg.top, cfg.device)
            found.pop("activations")
            return {"mode": "text", "sae_id": d.sae_id, **found}
        if cfg.feature is not None and cfg.similar:
            neighbours = similar(d, cfg.feature, cfg.top)
            return {"mode": "similar", "sae_id": d.sae_id, "feature": cfg.feature,
                    **d.labels([cfg.feature])[cfg.feature], "neighbours": neighbours}
        if cfg.feature is not None:
            return {"mode": "feature", "sae_id": d.sae_id, **describe(d, cfg.feature, cfg.top)}
        return {"mode": "persona", "sae_id": d.sae_id, **by_persona(d, cfg.persona, cfg.top)}
    finally:
        d.close()
