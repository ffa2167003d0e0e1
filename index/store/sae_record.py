"""`SaeRecord`: one row of the `saes` table, typed and frozen, built once where a command
chooses its SAE (`choose_sae`, the explorer's picker) and handed to every step after it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SaeRecord:
    """What the database says of one SAE it holds (the `saes` table; schema.TABLES["saes"])."""

    sae_id: str
    """The SAE's id in this database (the harvest's `--sae-id`, else its folder's name)."""
    model: str
    """The model as the harvest was given it: a built-in alias, a directory or a hub id."""
    hook: str
    """The hook point the SAE reads (e.g. blocks.3.hook_resid_post)."""
    d_in: int
    """The width of the activations it encodes (the model's d_model)."""
    d_sae: int
    """Its number of features."""
    kind: str = "residual"
    """residual: it encodes the residual stream; difference: the shift a persona's system
    prompt makes to it, against `reference`. A row from before kinds were stored reads as
    residual."""
    reference: str | None = None
    """A difference dictionary's reference system prompt ("" for an empty system turn)."""
    architecture: str | None = None
    """sae-lens's architecture name (standard, topk, jumprelu, …)."""
    path: str | None = None
    """The SAE's folder, as the harvest read it (its weights are read from here)."""
    weights_sha256: str | None = None
    """The sha256 of its sae_weights.safetensors at harvest time (a changed file is refused)."""
    model_source: str | None = None
    """Where the model's files were read from (a directory, or the hub id)."""
    template: str | None = None
    """The chat template the prompts were built with, as stored (core.templates)."""
    value_decimals: int | None = None
    """The decimals activation values were rounded to (None: not rounded)."""
    prefix_cache: bool | None = None
    """Whether the harvest reused each system prompt's key/value cache."""
    run_id: str | None = None
    """The run (`runs.run_id`) that harvested it."""
    logit_effects: str | None = None
    """Why the catalog holds no logit effects for it, when it does not."""
    release: str | None = None
    """The sae-lens release it was imported from (`sae import`), if any."""
    sae_lens_id: str | None = None
    """Its id inside that release."""
    neuronpedia_id: str | None = None
    """Its Neuronpedia id (model/source), for links to Neuronpedia's pages."""

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> SaeRecord:
        """The record of a `saes` row read by column name (a DuckDB row zipped with its
        columns, or a pandas row, whose missing values are NaN); the row's other columns are
        ignored. The caller has checked the row (database.check_saes_row)."""
        value = {k: _missing_as_none(v) for k, v in row.items()}

        def text(name: str) -> str | None:
            v = value.get(name)
            return None if v is None else str(v)

        def count(name: str) -> int | None:
            v = value.get(name)
            if v is None:
                return None
            if not isinstance(v, int):  # numpy integers are Python ones by now
                raise ValueError(f"saes.{name}: {v!r} is not an integer")
            return v

        def whole(name: str) -> int:
            v = count(name)
            if v is None:
                raise ValueError(f"saes.{name} is NULL")
            return v

        cache = value.get("prefix_cache")
        return cls(
            sae_id=str(value["sae_id"]),
            model=str(value["model"]),
            hook=str(value["hook"]),
            d_in=whole("d_in"),
            d_sae=whole("d_sae"),
            kind=text("kind") or "residual",
            reference=text("reference"),
            architecture=text("architecture"),
            path=text("path"),
            weights_sha256=text("weights_sha256"),
            model_source=text("model_source"),
            template=text("template"),
            value_decimals=count("value_decimals"),
            prefix_cache=None if cache is None else bool(cache),
            run_id=text("run_id"),
            logit_effects=text("logit_effects"),
            release=text("release"),
            sae_lens_id=text("sae_lens_id"),
            neuronpedia_id=text("neuronpedia_id"),
        )

    @property
    def is_difference(self) -> bool:
        """Whether it is a difference dictionary (its shifts are taken against `reference`)."""
        return self.kind == "difference"


def _missing_as_none(value: object) -> object:
    """None for SQL NULL and pandas' NaN; numpy scalars as Python ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str) else value
