"""`shoggoth explain`: a language model's explanation of each feature, scored on held-out
examples by detection and fuzzing (shoggoth/pipeline/explanations/prompts.py has the method).

The run reads every chosen feature's evidence from the database first, prints its plan with
an estimate measured on one feature, then explains and scores one feature at a time, each
written in its own transaction: Ctrl-C or a kill keeps what is done and a rerun with the same
settings continues. A request that fails (unreachable, timed out, not yes or no) is one line
naming the feature; that feature gets no row, never a made-up score, and the run exits 1 at
the end so that the gap is not missed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shoggoth.core.config import SEED_MAX, TIMEOUT, Config, option
from shoggoth.core.errors import BadInput
from shoggoth.core.lists import parse_numbers
from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log, Progress
from shoggoth.index.explanations import store as edb
from shoggoth.index.store.read import step_database
from shoggoth.pipeline.explanations.prompts import (
    PROMPT_VERSION,
    Evidence,
    Window,
    calls_per_feature,
    clean_explanation,
    detection_messages,
    explanation_messages,
    score_detection,
    score_fuzzing,
)
from shoggoth.sae.llm_clients import Explainer, ExplainerError, open_explainer


@dataclass
class ExplainConfig(Config):
    """`shoggoth explain`: explain features with a language model and score the explanations."""

    db: Path = option(required="a database from `shoggoth index`")
    """The feature database (examples from `shoggoth index`)."""
    sae: str | None = None
    """The SAE (its sae_id; default: the only one in the database)."""
    features: str | None = None
    """Features to explain, e.g. 12,40-45 (default: up to --limit features that fire in at
    least --held-out + 4 places and never in some answers, those whose label names a persona
    first, then the most distinctive handles)."""
    limit: int = option(20, min=1)
    """Features explained when --features is not given."""
    explainer: str = "smollm2"
    """An OpenAI-compatible endpoint (http://host:port/v1; a key from --api-key-env), or a
    local instruct model: alias, directory or hub id (SmolLM2, offline, by default)."""
    explainer_model: str | None = None
    """The model to ask an endpoint for (default: the first it lists)."""
    scorer: str | None = None
    """Who judges the held-out examples, as --explainer (default: the explainer)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (sent when set)."""
    timeout: float = option(60.0, **TIMEOUT)
    """Seconds to wait for one answer from an endpoint."""
    concurrency: int = option(4, min=1, max=64)
    """Requests an endpoint gets at a time."""
    shown: int = option(8, min=1, max=50)
    """Strongest examples shown to the explainer (plus one per activation interval)."""
    held_out: int = option(8, min=1, max=200)
    """Held-out firing windows per feature for scoring (and as many silent ones)."""
    width: int = option(8, min=1, max=64)
    """Tokens either side of the firing token in a window."""
    max_tokens: int = option(40, min=1)
    """Longest explanation, in tokens."""
    seed: int = option(0, min=0, max=SEED_MAX)
    """Seed for the silent windows and the wrong markings."""
    overwrite: bool = False
    """Explain again the features already explained with these settings."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N (for local models)."""
    device_map: str | None = None
    """Spread a local model over several devices: auto, or a JSON file of module → device (see
    docs/models.md)."""
    max_memory: str | None = None
    """With --device-map: the most memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB."""


def parse_features(text: str) -> list[int]:
    """'12,40-45' → [12, 40, 41, 42, 43, 44, 45]; BadInput naming the part that is not."""
    return parse_numbers(text, "--features")


def split_windows(
    rows: pd.DataFrame, shown: int, held_out: int
) -> tuple[list[Window], list[Window]]:
    """One feature's example windows (distinct answer stretches; the same answer under several
    personas counts once, at its strongest) split into shown and held-out ones: the strongest
    `shown` and the best of each interval are shown, the rest held out, spread over the
    intervals."""
    windows: dict[tuple[str, int], tuple[float, str, Window]] = {}
    for (kind, _rank, _persona, _para, item, pos), g in rows.groupby(
        ["kind", "rank", "persona", "paraphrase", "item_id", "pos"], sort=False
    ):
        value = float(g["value"].iloc[0])
        w = Window(str(item), tuple(g["token"]), tuple(float(a) for a in g["act"]))
        key = (str(item), int(pos))
        if key not in windows or value > windows[key][0]:
            windows[key] = (value, str(kind), w)
    ranked = sorted(windows.values(), key=lambda v: -v[0])
    tops = [w for _, kind, w in ranked if kind == "top"]
    intervals: dict[str, list[Window]] = {}
    for _, kind, w in ranked:
        if kind != "top":
            intervals.setdefault(kind, []).append(w)
    show = tops[:shown] + [ws[0] for ws in intervals.values()]
    # Held out: round-robin over the intervals (weak and strong firing), then the top.
    pools = [ws[1:] for ws in intervals.values()] + [tops[shown:]]
    held: list[Window] = []
    while len(held) < held_out and any(pools):
        for ws in pools:
            if ws and len(held) < held_out:
                held.append(ws.pop(0))
    # Few windows: up to half of them are held out all the same (the weakest shown ones go),
    # or nothing could be scored.
    while len(held) < min(held_out, len(ranked) // 2) and len(show) > 1:
        held.append(show.pop())
    return show, held


@dataclass
class ExplainPlan:
    """What a run will do, read from the database before any request."""

    sae_id: str
    """The SAE explained."""
    evidence: list[Evidence]
    """Every chosen feature not yet explained with these settings."""
    key: str
    """The settings, as stored with each explanation."""
    chosen: int
    """How many features were chosen (explained before or not)."""
    done_before: int
    """How many of them were already explained with these settings."""


def gather(cfg: ExplainConfig) -> ExplainPlan:
    """The SAE, every chosen feature's evidence, and the settings that identify this run."""
    with step_database(cfg.db, cfg.sae) as (con, record):
        sae_id = record.sae_id
        wanted = parse_features(cfg.features) if cfg.features else None
        if wanted and max(wanted) >= record.d_sae:
            raise BadInput(
                f"--features {max(wanted)}: out of range (the SAE has {record.d_sae:,} features)"
            )
        # By default only features with room for the held-out windows and a few to show.
        features = edb.choose_features(con, sae_id, wanted, cfg.limit, cfg.held_out + 4)
        key = edb.settings_key(
            {
                "explainer": cfg.explainer,
                "explainer_model": cfg.explainer_model,
                "scorer": cfg.scorer or cfg.explainer,
                "shown": cfg.shown,
                "held_out": cfg.held_out,
                "width": cfg.width,
                "seed": cfg.seed,
                "max_tokens": cfg.max_tokens,
                "prompt_version": PROMPT_VERSION,
            }
        )
        done = set() if cfg.overwrite else edb.done_features(con, sae_id, key)
        todo = [f for f in features if f not in done]
        rows = edb.windows(con, sae_id, todo, cfg.width) if todo else pd.DataFrame()
        evidence = []
        for f in todo:
            show, held = split_windows(rows[rows["feature"] == f], cfg.shown, cfg.held_out)
            silent = [
                Window(item, tuple(toks), (0.0,) * len(toks))
                for item, toks in edb.silent_windows(con, sae_id, f, len(held), cfg.width, cfg.seed)
            ]
            evidence.append(Evidence(f, show, held, silent, edb.persona_means(con, sae_id, f)))
    return ExplainPlan(sae_id, evidence, key, len(features), len(done & set(features)))


def explain_one(
    explainer: Explainer, judge: Explainer, ev: Evidence, cfg: ExplainConfig
) -> dict[str, Any]:
    """Explain and score one feature; ExplainerError when a request fails."""
    text = clean_explanation(explainer.chat(explanation_messages(ev), cfg.max_tokens))
    if not text:
        raise ExplainerError(f"{explainer.name}: wrote an empty explanation")
    det = score_detection(judge, text, ev)
    fuzz = score_fuzzing(judge, text, ev, cfg.seed)
    return {
        "feature": ev.feature,
        "explanation": text,
        "explainer": explainer.name,
        "scorer": judge.name,
        "detection": det.value,
        "detection_n": det.n,
        "detection_hits": list(det.hits),
        "fuzzing": fuzz.value,
        "fuzzing_n": fuzz.n,
        "fuzzing_hits": list(fuzz.hits),
        "n_shown": len(ev.shown),
    }


@dataclass(frozen=True)
class ExplainResult:
    """What `shoggoth explain` did, as its printer reads it."""

    sae_id: str
    """The SAE whose features were explained."""
    explained: int
    """The features explained and scored by this run."""
    already_done: int
    """The chosen features explained with these settings before this run."""
    failed: list[int]
    """The features whose requests failed (a rerun retries them)."""
    seconds: float
    """This run's time explaining (0 when there was nothing to do)."""


def explain(cfg: ExplainConfig, log: Log = print) -> ExplainResult:
    """Explain and score the chosen features; returns a summary (with the failures)."""
    plan = gather(cfg)
    sae_id, evidence = plan.sae_id, plan.evidence
    nothing = ExplainResult(sae_id, 0, plan.done_before, [], 0.0)
    if not plan.chosen:
        log(
            f"{sae_id}: no feature fires in {cfg.held_out + 4} places or more and stays silent in "
            "some answers, which scoring needs; name features with --features"
        )
        return nothing
    if not evidence:
        log(
            f"{sae_id}: every chosen feature is already explained with these settings "
            "(--overwrite explains them again)"
        )
        return nothing
    placement = placement_of(cfg.device_map, cfg.max_memory)
    explainer = open_explainer(
        cfg.explainer,
        cfg.explainer_model,
        cfg.api_key_env,
        cfg.timeout,
        cfg.device,
        cfg.concurrency,
        placement,
    )
    judge = (
        explainer
        if cfg.scorer in (None, cfg.explainer)
        else open_explainer(
            cfg.scorer,
            cfg.explainer_model,
            cfg.api_key_env,
            cfg.timeout,
            cfg.device,
            cfg.concurrency,
            placement,
        )
    )
    calls = sum(calls_per_feature(len(ev.held_out)) for ev in evidence)
    chars = sum(len(m["content"]) for ev in evidence for m in explanation_messages(ev))
    # The estimate rests on one timed judgment (an explanation is counted as three).
    t = time.time()
    warm = evidence[0].silent or evidence[0].held_out or evidence[0].shown
    try:
        judge.judge(detection_messages("(a test of the connection)", warm[0]))
    except ExplainerError as e:
        raise BadInput(f"--scorer {cfg.scorer or cfg.explainer}: {e}") from None
    per_call = time.time() - t
    estimate = per_call * (calls + 2 * len(evidence))
    log(
        f"{sae_id}: {len(evidence)} features to explain ({plan.done_before} done before) with "
        f"{explainer.name}, scored by {judge.name}: at most {calls:,} requests, about "
        f"{chars // 4:,} prompt tokens for the explanations and ~80 per judgment; one judgment "
        f"took {per_call:.2f} s, so about {estimate / 60:.1f} min"
    )
    started, explained, failed = time.time(), 0, []
    with Progress("explain", len(evidence), unit="features") as bar:
        for ev in evidence:
            try:
                row = explain_one(explainer, judge, ev, cfg)
            except ExplainerError as e:
                log(f"feature {ev.feature}: not explained: {e}")
                failed.append(ev.feature)
            else:
                edb.write_explanation(cfg.db, sae_id, {**row, "settings_json": plan.key})
                explained += 1
            bar.advance(1)
    return ExplainResult(
        sae_id, explained, plan.done_before, failed, round(time.time() - started, 1)
    )
