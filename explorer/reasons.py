"""Why a feature got its label, in sentences a reader can check against the thresholds of the
label run that produced it (docs/labels.md has the method; the thresholds are
`index.labels.rules.LabelConfig`, stored with every label run)."""

from __future__ import annotations

import math
from typing import Any

from shoggoth.core.printing import number
from shoggoth.index.labels.rules import LabelConfig


def _num(x: Any, digits: int = 2) -> str:
    if number(x) is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _persona_sentences(f: dict[str, Any], c: LabelConfig, label: str) -> list[str]:
    top = f.get("top_persona")
    members = f.get("family_set") or top
    out = [
        f"It stands apart for {members}: the weakest of them has {_num(f['set_ratio'])}× the "
        f"mean of the strongest other persona (≥ {c.contrast}), and every one of their "
        f"prompts beats every other persona's best prompt (weakest / best = "
        f"{_num(f['set_margin'])} > 1): no single wording carries it."
    ]
    ctrl = f.get("control_ratio")
    if label == "mask-specific":
        out.append(
            f"Mask-specific to {top}: its own mention and negation controls reach only "
            f"{_num(ctrl)} of its mean under {top} (below 1/{c.contrast}) and do not "
            "stand out from the other personas' controls (weakest / best = "
            f"{_num(f.get('control_margin'))} ≤ 1), so it is the mask, not the mere "
            "mention of the persona."
        )
    elif label == "persona-concept":
        out.append(
            f"Persona concept, not a mask: it also fires when {members} is only "
            f"mentioned or negated: a matched control reaches ≥ 1/{c.contrast} of the "
            f"persona's mean (top persona: {_num(ctrl)}), or every wording of it beats "
            "every other persona's mention and negation prompts (top persona: weakest / "
            f"best = {_num(f.get('control_margin'))})."
        )
    elif label == "mask-or-concept":
        out.append(
            f"Mask or concept: {top} has no mention/negation control in this battery, "
            "so whether the feature is the mask or the persona's concept cannot be told."
        )
    else:
        fam = f.get("battery_family")
        out.append(
            f"Mask-family ({members}): the smallest set of personas (at most "
            f"{_num(100 * c.family_fraction, 0)}% of them) that stands apart; "
            + (
                f"it is the battery's family '{fam}'."
                if fam and not fam.startswith("part")
                else f"it is {fam} of the battery."
                if fam
                else "it is not one of the battery's families."
            )
        )
    return out


def label_reasons(f: dict[str, Any], cfg: LabelConfig | None = None) -> list[str]:
    """Sentences saying which statistics put feature row `f` (a `features` row) in its label."""
    c = cfg or LabelConfig()
    label = f["auto_label"] if "auto_label" in f else f["label"]
    n_docs = f.get("n_docs_firing") or 0
    if label == "dead":
        return ["It never fired on any answer token of the battery."]
    if label == "rare":
        return [f"It fired in {n_docs} documents, fewer than the {c.min_docs} needed to test it."]
    top = f.get("top_persona") or f.get("argmax_persona")
    out = [
        f"It fired in {n_docs:,} documents, under {_num(100 * f['fire_frac_personas'], 0)}% "
        f"of the personas; its strongest persona is {top} ({_num(f.get('top_ratio'))}× the "
        "runner-up)."
    ]
    q = f.get("q_value")
    sig = q is not None and not math.isnan(q) and q < c.alpha
    out.append(
        f"Persona effect, with the prompts as replicates (ANOVA on log prompt means, "
        f"p from {c.permutations} relabellings of the prompts, BH-corrected): q = "
        f"{_num(q, 2)} — {'significant' if sig else 'not significant'} at {c.alpha}."
    )
    if label in ("mask-specific", "persona-concept", "mask-or-concept", "mask-family"):
        return out + _persona_sentences(f, c, label)
    bound, power = f.get("ratio_ci_high"), f.get("shared_power")
    if label in ("shared", "mask-general"):
        out.append(
            f"Shared: it fires under ≥ {_num(100 * c.shared_fire_frac, 0)}% of personas "
            f"and no persona's mean is more than {_num(bound)}× the others' at "
            f"{_num(100 * c.confidence, 0)}% confidence (≤ {c.shared_ratio_bound}; a "
            f"feature truly equal across personas would pass "
            f"{_num(None if power is None else 100 * power, 0)}% "
            "of the time with this data): shown equivalent, not merely not different."
        )
        if label == "mask-general":
            out.append(
                f"Mask-general: without any persona (the baseline controls) it reaches "
                f"only {_num(f.get('no_mask_ratio'))} of its mean under the personas "
                f"(≤ {c.no_mask_ratio}): shared by all masks, not there without one."
            )
        else:
            out.append(
                f"It is there without a persona too (baseline controls / personas = "
                f"{_num(f.get('no_mask_ratio'))})."
            )
    elif label == "shared-modulated":
        out.append(
            f"Shared but modulated: it fires under ≥ {_num(100 * c.shared_fire_frac, 0)}% "
            "of personas, its strength differs significantly between them, and no set "
            f"of personas stands apart (persona vs others bound {_num(bound)})."
        )
    else:
        out.append(
            "Unclear: no set of personas stands apart by the contrast and wording rules, "
            f"and it is not shown equivalent across personas (top / runner-up "
            f"{_num(f.get('top_ratio'))}, wording margin "
            f"{_num(f.get('paraphrase_margin'))}, shared bound {_num(bound)})."
        )
    return out
