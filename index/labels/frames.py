"""The labeller's inputs as two records: one SAE's harvest read as frames (`HarvestFrames`,
read once by `label_database`) and the item bootstrap's settings (`Resampling`), so the label,
calibration and decomposition steps take them whole instead of a dozen loose arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class HarvestFrames:
    """One SAE's harvest, as the labeller reads it."""

    doc_features: pd.DataFrame
    """persona, paraphrase, item_id, feature, mean_act: each document's mean activation of
    every feature that fired in it."""
    documents: pd.DataFrame
    """persona, paraphrase, item_id: every harvested document, fired or not."""
    personas: pd.DataFrame
    """persona, family, is_control, control_of, in the battery's order."""
    topics: dict[str, str]
    """item_id → topic, for the topic-stratified item bootstrap."""
    n_features: int
    """The SAE's number of features (d_sae)."""
    shifts: pd.DataFrame = field(default_factory=pd.DataFrame)
    """persona, paraphrase, item_id, shift, shift_hat: each document's shift against its
    reference and the dictionary's reconstruction of it (`document_shifts`; empty for a harvest
    that stored none)."""
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)
    """persona, prompt: the battery's system prompts."""


@dataclass(frozen=True)
class Resampling:
    """How intervals are drawn: the item bootstrap, stratified by topic."""

    bootstrap: int
    """Bootstrap resamples of the items."""
    confidence: float
    """The intervals' confidence level (e.g. 0.95)."""
    seed: int
    """The resampling's random seed."""
