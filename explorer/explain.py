"""Why a feature got its label, in sentences a reader can check against the thresholds
(docs/labels.md has the method; the thresholds are `index.labels.LabelConfig`)."""

from __future__ import annotations

import math
from typing import Any

from index.labels import LabelConfig


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def explain(f: dict[str, Any], cfg: LabelConfig | None = None) -> list[str]:
    """Sentences saying which statistics put feature row `f` (a `features` row) in its label."""
    c = cfg or LabelConfig()
    label = f["auto_label"] if "auto_label" in f else f["label"]
    n_docs = f.get("n_docs_firing") or 0
    top = f.get("top_persona") or f.get("argmax_persona")
    out = []
    if label == "dead":
        return ["It never fired on any answer token of the battery."]
    if label == "rare":
        return [f"It fired in {n_docs} documents, fewer than the {c.min_docs} needed to "
                "test it."]
    out.append(f"It fired in {n_docs:,} documents, under {_num(100 * f['fire_frac_personas'], 0)}% "
               f"of the personas; its strongest persona is {top} with "
               f"{_num(100 * f['top_share'], 0)}% of the summed per-persona means.")
    q = f.get("q_value")
    sig = q is not None and not math.isnan(q) and q < c.alpha
    out.append(f"Persona effect (Friedman test blocked by item, BH-corrected): q = "
               f"{_num(f.get('q_value'), 2)} — {'significant' if sig else 'not significant'} "
               f"at {c.alpha}.")
    if label == "mask-specific":
        out.append(f"Mask-specific to {top}: share {_num(f['top_share'])} ≥ {c.specific_share}, "
                   f"effective number of personas {_num(f['k_eff'])} ≤ {c.specific_k_eff}, "
                   f"AUROC {_num(f['auroc'])} ≥ {c.specific_auroc} for {top} against the rest, "
                   f"the same top persona in {_num(100 * f['paraphrase_stability'], 0)}% of "
                   f"leave-one-paraphrase-out splits (≥ {_num(100 * c.specific_stability, 0)}%), "
                   f"and the controls reach only {_num(f['control_ratio'])} of its mean under "
                   f"{top} (≤ {c.specific_control_ratio}).")
    elif label == "mask-family":
        out.append(f"Mask-family ({f.get('family_set')}): significant, and spread over "
                   f"{_num(f['k_eff'])} effective personas — more than {c.specific_k_eff} (one "
                   f"mask) but no more than a third of the personas.")
    elif label == "shared":
        out.append(f"Shared: fires under ≥ {_num(100 * c.shared_fire_frac, 0)}% of personas, "
                   f"normalised entropy {_num(f['norm_entropy'])} ≥ {c.shared_entropy}, and the "
                   f"largest/smallest persona mean is at most {_num(f['ratio_ci_high'])} at the "
                   f"{_num(100 * c.confidence, 0)}% bootstrap bound (≤ {c.shared_ratio_bound}): "
                   "shown equivalent across personas, not merely not different.")
    elif label == "shared-modulated":
        out.append(f"Shared but modulated: it fires under ≥ {_num(100 * c.shared_fire_frac, 0)}% "
                   "of personas, but its strength differs significantly between them and it is "
                   f"not shown equivalent (max/min ratio {_num(f['max_min_ratio'])}, upper bound "
                   f"{_num(f['ratio_ci_high'])}; normalised entropy "
                   f"{_num(f['norm_entropy'])}).")
    else:
        out.append("Unclear: it meets neither the mask-specific or mask-family criteria nor "
                   f"the shared ones (K_eff {_num(f.get('k_eff'))}, AUROC "
                   f"{_num(f.get('auroc'))}, normalised entropy {_num(f.get('norm_entropy'))}, "
                   f"ratio bound {_num(f.get('ratio_ci_high'))}).")
    return out
