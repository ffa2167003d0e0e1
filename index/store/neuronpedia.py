"""`shoggoth export --neuronpedia DIR`: one SAE's feature catalog in Neuronpedia's bulk-import
layout (`--neuronpedia-url` uploads it: index/store/neuronpedia_upload.py).

The layout is the one neuronpedia's `utils/neuronpedia-utils` scripts write
(convert-saedashboard-to-neuronpedia-export.py, export-data.py) and its admin import route
(apps/webapp/app/api/admin/import/route.ts) reads, under the dataset root DIR:

    DIR/{modelId}/{layer}-{sourceSet}/
        release.jsonl            one SourceRelease row (the import skips a missing one)
        model.jsonl              one Model row
        sourceset.jsonl          one SourceSet row
        source.jsonl             one Source row
        features/batch-N.jsonl.gz      Feature rows ("Neuron" in the database)
        activations/batch-N.jsonl.gz   Activation rows: the examples, one per row
        explanations/batch-N.jsonl.gz  Explanation rows: shoggoth's label and explanation
        explanation_type.jsonl   the ExplanationType rows of shoggoth's two explanation types
                                 (not read by the import: add them to the instance's
                                 config/explanation_type.jsonl first, see docs/scaling.md)
    DIR/shoggoth-neuronpedia.json   what was exported, from which database (marks the folder)

Each row is one JSON object per line with every field of neuronpedia's dataclass
(utils/neuronpedia-utils/neuronpedia_utils/db_models/*.py), in its order; datetimes as ISO 8601,
as those scripts write them. Batch N (from 0) holds the N-th run of `FEATURES_PER_BATCH`
exported features, in all three folders (export-data.py's batch size); a batch with no
activation or explanation rows has no file there (the import cannot read an empty file).

A feature is exported when it fired in the harvest. Its examples are `shoggoth index`'s
`examples` rows: the top activations (binMin −1 and binContains −1, as SAEDashboard marks them)
and the samples of each equal-width interval (binMin/binMax its edges, binContains the share of
the feature's firing tokens in it). Each example row holds its document's whole answer (a window
of `MAX_TOKENS` around the example in a longer one) with the feature's activation on every token,
and names its persona, prompt and item in `dataSource`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np

from shoggoth.core.errors import BadInput, clip, first_line
from shoggoth.core.names import NEURONPEDIA_ID, shown_name
from shoggoth.index.store import delphi
from shoggoth.index.store.database import tables

MARKER = "shoggoth-neuronpedia.json"
"""The file at DIR's top that says what was exported; also what marks the folder as this
export (a folder without it is never replaced)."""
FEATURES_PER_BATCH = 1024
"""Features per batch file (export-data.py's FEATURES_EXPLANATIONS_BATCH_SIZE)."""
MAX_TOKENS = 1024
"""Tokens an example row holds at most (upload-batch accepts 1..1024)."""
PROMPT_SHOWN = 120
"""Characters of the persona's system prompt quoted in an example's dataSource."""
DEFAULT_CREATOR = "clkht01d40000jv08hvalcvly"
"""The user a Neuronpedia instance seeds and uses by default (apps/webapp/lib/env.ts:
DEFAULT_CREATOR_USER_ID): every row's creatorId / authorId unless --neuronpedia-creator."""
LABEL_TYPE = "shoggoth-label"
"""The explanation type of shoggoth's label (its class, FDR and preferred persona)."""
EXPLAIN_TYPE = "shoggoth-explain"
"""The explanation type of `shoggoth explain`'s scored explanation."""
PERSONA_LABELS = ("mask-specific", "persona-concept", "mask-or-concept")
"""Labels whose top_persona is the persona the feature prefers (as the feature_names view)."""
MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._\-]{0,127}")
"""A Neuronpedia model id: lowercase (upload-batch lowercases it), one path segment."""
SOURCE_ID = re.compile(r"[a-z0-9]+-[a-z0-9][a-z0-9._\-]{0,126}")
"""A Neuronpedia source, `{layer}-{sourceSet}`, optionally `__suffix` (the set's name stops
before it, as in neuronpedia's getSourceSetNameFromSource)."""


# ---- neuronpedia's rows (utils/neuronpedia-utils/neuronpedia_utils/db_models/) ----


@dataclass
class SourceRelease:
    """source_release.py: a release (a paper or a set of SAEs), release.jsonl."""

    name: str
    """The release's id (its URL on the instance)."""
    description: str
    """Its title."""
    creatorName: str
    """Who made it."""
    creatorId: str
    """The instance user that owns it."""
    visibility: str = "PUBLIC"
    """PUBLIC, UNLISTED or PRIVATE."""
    isNewUi: bool = False
    """Whether the release page uses the new layout."""
    featured: bool = False
    """Whether the instance features it."""
    descriptionShort: str | None = None
    """A short title."""
    urls: list[str] = field(default_factory=list)
    """Links (paper, weights)."""
    creatorEmail: str | None = None
    """The creator's email."""
    creatorNameShort: str | None = None
    """A short creator name."""
    defaultSourceSetName: str | None = None
    """The source set the release page opens."""
    defaultSourceId: str | None = None
    """The source the release page opens."""
    defaultUmapSourceIds: list[str] = field(default_factory=list)
    """Sources whose UMAP the page shows."""
    createdAt: str = ""
    """When (a datetime in the dataclass; ISO 8601 in the file)."""


@dataclass
class Model:
    """model.py: the model, model.jsonl (the import keeps an existing model as it is)."""

    id: str
    """The model id, e.g. gpt2-small."""
    instruct: bool
    """Whether it is a chat (instruct) model."""
    creatorId: str
    """The instance user that owns it."""
    displayNameShort: str = ""
    """Short display name."""
    displayName: str = ""
    """Display name."""
    tlensId: str | None = None
    """Its TransformerLens name."""
    dimension: int | None = None
    """d_model."""
    visibility: str = "PUBLIC"
    """PUBLIC, UNLISTED or PRIVATE."""
    defaultSourceSetName: str | None = None
    """The source set its page opens."""
    defaultSourceId: str | None = None
    """The source its page opens."""
    inferenceEnabled: bool = True
    """Whether the instance runs the model (activation testing, steering)."""
    layers: int = 0
    """Number of layers."""
    neuronsPerLayer: int = 0
    """MLP neurons per layer."""
    createdAt: str = ""
    """When (ISO 8601)."""
    owner: str = ""
    """Who released the model."""
    updatedAt: str = ""
    """When last changed (ISO 8601)."""
    website: str | None = None
    """The model's website."""


@dataclass
class SourceSet:
    """source_set.py: a family of sources (one SAE per layer), sourceset.jsonl."""

    modelId: str
    """The model."""
    name: str
    """The set's name, e.g. res-jb."""
    creatorId: str
    """The instance user that owns it (upload-batch accepts only its creator's uploads)."""
    hasDashboards: bool = True
    """Whether its features have pages."""
    visibility: str = "PRIVATE"
    """PUBLIC, UNLISTED or PRIVATE."""
    description: str = ""
    """What the set is, e.g. Residual Stream - 16k."""
    type: str = ""
    """Its kind."""
    creatorName: str = ""
    """Who made it."""
    urls: list[str] = field(default_factory=list)
    """Links."""
    creatorEmail: str | None = None
    """The creator's email."""
    releaseName: str | None = None
    """Its release (SourceRelease.name)."""
    defaultOfModelId: str | None = None
    """The model it is the default set of."""
    defaultRange: int = 1
    """Tokens shown around an activation by default."""
    defaultShowBreaks: bool = True
    """Whether line breaks are shown."""
    showDfa: bool = False
    """Whether DFA values are shown."""
    showCorrelated: bool = False
    """Whether correlated features are shown."""
    showHeadAttribution: bool = False
    """Whether head attribution is shown."""
    showUmap: bool = False
    """Whether a UMAP is shown."""
    createdAt: str = ""
    """When (ISO 8601)."""


@dataclass
class Source:
    """source.py: one SAE, source.jsonl."""

    id: str
    """`{layer}-{sourceSet}`: the feature pages' second path segment."""
    modelId: str
    """The model."""
    setName: str
    """Its source set."""
    creatorId: str
    """The instance user that owns it."""
    hasDashboards: bool = True
    """Whether its features have pages."""
    inferenceEnabled: bool = False
    """Whether the instance runs it."""
    inferenceHosts: list[str] = field(default_factory=list)
    """Inference servers."""
    saelensConfig: str | None = None
    """Its sae-lens config."""
    saelensRelease: str | None = None
    """The sae-lens release it comes from."""
    saelensSaeId: str | None = None
    """Its id in that release."""
    hfRepoId: str | None = None
    """Hugging Face repo of the weights."""
    hfFolderId: str | None = None
    """Folder in that repo."""
    visibility: str = "PUBLIC"
    """PUBLIC, UNLISTED or PRIVATE."""
    defaultOfModelId: str | None = None
    """The model it is the default source of."""
    hasUmap: bool = False
    """Whether a UMAP exists."""
    hasUmapLogSparsity: bool = False
    """Whether the UMAP has log sparsity."""
    hasUmapClusters: bool = False
    """Whether the UMAP has clusters."""
    num_prompts: int | None = None
    """Texts the dashboards were computed on."""
    num_tokens_in_prompt: int | None = None
    """Tokens per text."""
    dataset: str | None = None
    """What the texts were."""
    notes: str | None = None
    """Free text."""
    createdAt: str = ""
    """When (ISO 8601)."""


@dataclass
class Feature:
    """feature.py: one feature's page data, features/batch-N.jsonl.gz."""

    modelId: str
    """The model."""
    layer: str
    """The source id, `{layer}-{sourceSet}`."""
    index: str
    """The feature's index, as text."""
    creatorId: str | None = None
    """The instance user that owns it."""
    createdAt: str = ""
    """When (ISO 8601)."""
    maxActApprox: float | None = 0
    """Its largest activation."""
    hasVector: bool = False
    """Whether `vector` holds a steering vector."""
    vector: list[float] = field(default_factory=list)
    """A steering vector (none here)."""
    vectorLabel: str | None = None
    """The vector's label."""
    vectorDefaultSteerStrength: float | None = 10
    """Default steering strength."""
    hookName: str | None = None
    """The hook the vector steers (with a vector only)."""
    topkCosSimIndices: list[int] = field(default_factory=list)
    """Nearest features by decoder cosine, nearest first."""
    topkCosSimValues: list[float] = field(default_factory=list)
    """Their cosines."""
    neuron_alignment_indices: list[int] = field(default_factory=list)
    """Neurons most aligned with the decoder direction."""
    neuron_alignment_values: list[float] = field(default_factory=list)
    """Their alignment."""
    neuron_alignment_l1: list[float] = field(default_factory=list)
    """Their L1 share."""
    correlated_neurons_indices: list[int] = field(default_factory=list)
    """Neurons most correlated in activation."""
    correlated_neurons_pearson: list[float] = field(default_factory=list)
    """Their Pearson correlation."""
    correlated_neurons_l1: list[float] = field(default_factory=list)
    """Their L1."""
    correlated_features_indices: list[int] = field(default_factory=list)
    """Features most correlated in activation."""
    correlated_features_pearson: list[float] = field(default_factory=list)
    """Their Pearson correlation."""
    correlated_features_l1: list[float] = field(default_factory=list)
    """Their L1."""
    neg_str: list[str] = field(default_factory=list)
    """Tokens the decoder direction suppresses most (bottom logits)."""
    neg_values: list[float] = field(default_factory=list)
    """Their logit effects."""
    pos_str: list[str] = field(default_factory=list)
    """Tokens it promotes most (top logits)."""
    pos_values: list[float] = field(default_factory=list)
    """Their logit effects."""
    frac_nonzero: float = 0
    """Density: the fraction of tokens on which it fires."""
    freq_hist_data_bar_heights: list[float] = field(default_factory=list)
    """Activation histogram: tokens per bin."""
    freq_hist_data_bar_values: list[float] = field(default_factory=list)
    """Activation histogram: each bin's midpoint."""
    logits_hist_data_bar_heights: list[float] = field(default_factory=list)
    """Histogram of logit effects over the vocabulary: heights."""
    logits_hist_data_bar_values: list[float] = field(default_factory=list)
    """Its bin midpoints."""
    decoder_weights_dist: list[float] = field(default_factory=list)
    """Distribution of the decoder weights."""
    sourceSetName: str | None = None
    """Its source set."""


@dataclass
class Activation:
    """activation.py: one example, activations/batch-N.jsonl.gz."""

    id: str
    """Unique id (here a hash of the row: the same example keeps its id)."""
    tokens: list[str]
    """The text's tokens."""
    index: str
    """The feature's index, as text."""
    layer: str
    """The source id."""
    modelId: str
    """The model."""
    maxValue: float
    """The largest of `values`."""
    maxValueTokenIndex: int
    """Where it is."""
    minValue: float
    """The smallest of `values`."""
    values: list[float]
    """The feature's activation on each token."""
    creatorId: str
    """The instance user that owns it."""
    dataSource: str | None = None
    """Where the text comes from: here the persona, its prompt and the item."""
    dataIndex: str | None = None
    """The text's key in its source: here persona/paraphrase/item."""
    dfaValues: list[float] = field(default_factory=list)
    """Direct feature attribution per token (attention SAEs)."""
    dfaTargetIndex: int | None = None
    """The DFA target token."""
    dfaMaxValue: float | None = None
    """The largest DFA value."""
    createdAt: str = ""
    """When (ISO 8601)."""
    lossValues: list[float] = field(default_factory=list)
    """Loss change per token."""
    logitContributions: str | None = None
    """Logit contributions (JSON text)."""
    binMin: float | None = None
    """The lower edge of the interval the example was sampled from (−1: a top example)."""
    binMax: float | None = None
    """Its upper edge (a top example: the feature's largest activation)."""
    binContains: float | None = None
    """The share of the feature's firing tokens in that interval (−1: a top example)."""
    qualifyingTokenIndex: int | None = None
    """The token that made this an example."""
    zIndices: list[list[int]] | None = None
    """Attention z indices."""
    zValues: list[float] | None = None
    """Attention z values."""


@dataclass
class Explanation:
    """explanation.py: one explanation, explanations/batch-N.jsonl.gz."""

    id: str
    """Unique id (a hash of the row)."""
    modelId: str
    """The model."""
    layer: str
    """The source id."""
    index: str
    """The feature's index, as text."""
    description: str
    """The explanation's text."""
    authorId: str
    """The instance user that wrote it."""
    embedding: list[float] | None = None
    """Its text embedding (the instance computes it)."""
    triggeredById: str | None = None
    """Who asked for it."""
    typeName: str | None = None
    """Its explanation type (ExplanationType.name): shoggoth-label or shoggoth-explain."""
    explanationModelName: str | None = None
    """The model that wrote it (ExplanationModelType.name; none here: shoggoth's explainer is
    named in `notes`)."""
    notes: str | None = None
    """Free text: the explainer, scorer and scores; the label's evidence."""
    createdAt: str = ""
    """When (ISO 8601)."""


@dataclass
class ExplanationType:
    """Not a db_models dataclass: the ExplanationType model of apps/webapp/prisma/schema.prisma
    (the rows of the instance's config/explanation_type.jsonl, which its import upserts before
    any explanation; an explanation's typeName must name one)."""

    name: str
    """The type's name (Explanation.typeName, upload-batch's methodName)."""
    displayName: str
    """Shown name."""
    description: str
    """What the type is."""
    featured: bool = True
    """Whether the instance features it."""
    isAttention: bool = False
    """Whether it explains attention heads."""
    explainerModelSettingsId: str | None = None
    """Explainer settings (unused)."""
    settings: str | None = None
    """Settings text."""
    url: str | None = None
    """Where the method is described."""
    creatorName: str = "shoggoth"
    """Who made it."""
    creatorId: str = DEFAULT_CREATOR
    """The instance user that owns it."""
    createdAt: str = ""
    """When (ISO 8601)."""
    updatedAt: str = ""
    """When last changed (ISO 8601)."""


Row = (
    SourceRelease
    | Model
    | SourceSet
    | Source
    | Feature
    | Activation
    | Explanation
    | ExplanationType
)


# ---- what is exported ----


@dataclass(frozen=True)
class Target:
    """Where on Neuronpedia the SAE goes."""

    model_id: str
    """modelId."""
    source: str
    """`{layer}-{sourceSet}`: the Source id and every row's `layer`."""
    creator: str
    """creatorId / authorId of every row."""

    @property
    def source_set(self) -> str:
        """The source set's name: after the layer, before any `__` suffix."""
        return self.source.split("-", 1)[1].split("__")[0]

    @property
    def folder(self) -> Path:
        """The source's folder, relative to DIR."""
        return Path(self.model_id) / self.source


@dataclass(frozen=True)
class Plan:
    """The SAE to export and where it goes, resolved and checked before anything is built."""

    sae_id: str
    """The SAE (`saes.sae_id`)."""
    target: Target
    """Its Neuronpedia model and source."""


@dataclass(frozen=True)
class Written:
    """What an export holds."""

    plan: Plan
    """What was exported."""
    features: int
    """Feature rows."""
    activations: int
    """Activation rows (examples)."""
    explanations: int
    """Explanation rows."""
    batches: int
    """Batch files per folder (at most)."""


def parse_target(
    neuronpedia_id: object, model: str | None, source: str | None, creator: str, sae_id: str
) -> Target:
    """modelId and source from --neuronpedia-model / --neuronpedia-source where given, else from
    the SAE's `neuronpedia_id`; BadInput in one line when neither gives both or one is not a
    Neuronpedia name."""
    stored_model = stored_source = None
    if isinstance(neuronpedia_id, str) and NEURONPEDIA_ID.fullmatch(neuronpedia_id):
        stored_model, stored_source = neuronpedia_id.split("/")
    if (model or stored_model) is None or (source or stored_source) is None:
        raise BadInput(
            f"--neuronpedia-model, --neuronpedia-source: the SAE "
            f"'{shown_name(sae_id)}' has no neuronpedia_id; give both (e.g. "
            "--neuronpedia-model gpt2-small --neuronpedia-source 8-res-jb)"
        )
    stored = f"the SAE's neuronpedia_id '{shown_name(neuronpedia_id)}': its"
    return Target(
        check_model(model) if model else check_model(str(stored_model), stored),
        check_source(source) if source else check_source(str(stored_source), stored),
        creator,
    )


def check_model(model: str, where: str = "--neuronpedia-model") -> str:
    """`model` when it is a Neuronpedia model id; BadInput naming `where` otherwise."""
    if not MODEL_ID.fullmatch(model):
        raise BadInput(
            f"{where} '{shown_name(model)}': not a Neuronpedia model id (lowercase "
            "letters, digits, '.', '_', '-'; give --neuronpedia-model)"
        )
    return model


def check_source(source: str, where: str = "--neuronpedia-source") -> str:
    """`source` when it is a Neuronpedia source, {layer}-{sourceSet}; BadInput naming `where`
    otherwise."""
    if not SOURCE_ID.fullmatch(source):
        raise BadInput(
            f"{where} '{shown_name(source)}': not a Neuronpedia source "
            "{layer}-{sourceSet} (lowercase, e.g. 8-res-jb; give "
            "--neuronpedia-source)"
        )
    return source


def plan(
    con: duckdb.DuckDBPyConnection,
    db: Path,
    sae: str | None,
    model: str | None,
    source: str | None,
    creator: str,
) -> Plan:
    """The SAE to export and its target, checked: a harvest with its answer tokens, activations
    inside the width and the answers, and `shoggoth index`'s examples."""
    sae_id = delphi.harvested_sae(con, db, sae)
    where = f"--db {db}: SAE '{shown_name(sae_id)}'"
    row = con.execute(
        "SELECT d_sae, neuronpedia_id FROM saes WHERE sae_id = ?", [sae_id]
    ).fetchall()
    if len(row) != 1:
        raise BadInput(f"{where}: has documents but {len(row)} rows in saes, not one")
    width, neuronpedia_id = row[0]
    if type(width) is not int or width < 1:
        raise BadInput(f"{where}: its d_sae '{shown_name(width)}' is not a positive integer")
    target = parse_target(neuronpedia_id, model, source, creator, sae_id)
    delphi.check_tokens(con, where, sae_id)
    longest = delphi.one(
        con, "SELECT coalesce(max(n_tokens), 0) FROM documents WHERE sae_id = $sae", {"sae": sae_id}
    )[0]
    delphi.count_activations(con, where, sae_id, width, int(longest))
    if (
        "examples" not in tables(con)
        or not delphi.one(
            con, "SELECT count(*) FROM examples WHERE sae_id = $sae", {"sae": sae_id}
        )[0]
    ):
        raise BadInput(
            f"{where}: has no examples; run `shoggoth index` first (Neuronpedia's "
            "pages are built from its examples, histograms and logit effects)"
        )
    return Plan(sae_id, target)


# ---- writing ----


def now() -> str:
    """This moment in ISO 8601 (UTC), as the rows' createdAt."""
    return datetime.now(UTC).isoformat()


def f32(values: Sequence[float | None]) -> list[float]:
    """FLOAT column values as the shortest decimals that are the same float32 (DuckDB hands
    them over widened to double: 0.30000001192092896 for 0.3); a NULL, which the schema
    forbids, as 0."""
    return [0.0 if v is None else float(str(np.float32(v))) for v in values]


def one_f32(value: float | None) -> float | None:
    """One FLOAT value as `f32` gives it; None stays None."""
    return None if value is None else f32([value])[0]


def row_json(row: Row) -> bytes:
    """One JSON line: every field of the row, in the dataclass's order. NaN and infinity are
    refused (JSON has no such values)."""
    try:
        return (
            json.dumps(dataclasses.asdict(row), ensure_ascii=False, allow_nan=False).encode()
            + b"\n"
        )
    except ValueError:
        raise BadInput(
            f"a {type(row).__name__} row holds a value that is not finite; the database is damaged"
        ) from None


def row_id(row: Activation | Explanation) -> str:
    """A cuid-shaped id (25 characters, starting with c) from the row's content: the same
    example or explanation exported again keeps its id, so a second import adds nothing."""
    data = dataclasses.asdict(row)
    data.pop("id"), data.pop("createdAt")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return "c" + digest[:24]


def write_rows(path: Path, rows: Sequence[Row]) -> None:
    """`rows` as JSON lines at `path` (gzip-compressed when it ends in .gz, level 5 as
    neuronpedia's scripts); no file for no rows."""
    if not rows:
        return
    data = b"".join(row_json(r) for r in rows)
    path.write_bytes(
        gzip.compress(data, compresslevel=5, mtime=0) if path.suffix == ".gz" else data
    )


@dataclass(frozen=True)
class Context:
    """What every batch needs: the SAE's facts, read once."""

    plan: Plan
    """What is exported."""
    created: str
    """Every row's createdAt."""
    tokens: dict[str, list[str]]
    """Item → its answer's tokens."""
    prompts: dict[tuple[str, int], str]
    """(persona, paraphrase) → its system prompt."""
    measured: int
    """Answer tokens over all documents: the density's denominator."""
    have: frozenset[str]
    """The database's tables."""


def read_context(con: duckdb.DuckDBPyConnection, the_plan: Plan) -> Context:
    """The answer tokens, the prompts and the measured tokens of the SAE."""
    sae = {"sae": the_plan.sae_id}
    tokens: dict[str, list[str]] = {}
    for item, token in con.execute(
        "SELECT item_id::VARCHAR, coalesce(token::VARCHAR, '') "
        "FROM tokens "
        "WHERE sae_id = $sae ORDER BY item_id, pos",
        sae,
    ).fetchall():
        tokens.setdefault(item, []).append(token)
    prompts = {
        (p, int(k)): str(t)
        for p, k, t in con.execute(
            "SELECT persona::VARCHAR, paraphrase::INTEGER, prompt::VARCHAR FROM persona_prompts"
        ).fetchall()
    }
    measured = delphi.one(
        con, "SELECT coalesce(sum(n_tokens), 0)::BIGINT FROM documents WHERE sae_id = $sae", sae
    )[0]
    return Context(the_plan, now(), tokens, prompts, int(measured), frozenset(tables(con)))


def release_rows(con: duckdb.DuckDBPyConnection, ctx: Context) -> dict[str, Row]:
    """release.jsonl, model.jsonl, sourceset.jsonl and source.jsonl: file name → its row."""
    t, sae_id, at = ctx.plan.target, ctx.plan.sae_id, ctx.created
    hook, d_in, d_sae, template, release, lens_id = con.execute(
        "SELECT hook::VARCHAR, d_in::INTEGER, d_sae::INTEGER, "
        "template::VARCHAR, release::VARCHAR, sae_lens_id::VARCHAR FROM saes "
        "WHERE sae_id = ?",
        [sae_id],
    ).fetchall()[0]
    personas, prompts, items, docs, longest = delphi.one(
        con,
        "SELECT count(DISTINCT persona), count(DISTINCT (persona, paraphrase)), "
        "count(DISTINCT item_id), count(*), coalesce(max(n_tokens), 0) FROM documents "
        "WHERE sae_id = $sae",
        {"sae": sae_id},
    )
    name = f"shoggoth-{t.source_set}"
    about = f"shoggoth persona-battery dashboards of SAE '{sae_id}' ({hook})"
    return {
        "release.jsonl": SourceRelease(
            name=name,
            description=about,
            creatorName="shoggoth",
            creatorId=t.creator,
            descriptionShort=clip(about, 80),
            defaultSourceSetName=t.source_set,
            defaultSourceId=t.source,
            createdAt=at,
        ),
        "model.jsonl": Model(
            id=t.model_id,
            instruct=template == "chat",
            creatorId=t.creator,
            displayNameShort=t.model_id,
            displayName=t.model_id,
            dimension=d_in,
            defaultSourceSetName=t.source_set,
            defaultSourceId=t.source,
            inferenceEnabled=False,
            createdAt=at,
            updatedAt=at,
        ),
        "sourceset.jsonl": SourceSet(
            modelId=t.model_id,
            name=t.source_set,
            creatorId=t.creator,
            visibility="PUBLIC",
            creatorName="shoggoth",
            description=f"shoggoth: {hook}, {d_sae:,} features",
            releaseName=name,
            createdAt=at,
        ),
        "source.jsonl": Source(
            id=t.source,
            modelId=t.model_id,
            setName=t.source_set,
            creatorId=t.creator,
            saelensRelease=release,
            saelensSaeId=lens_id,
            num_prompts=int(docs),
            num_tokens_in_prompt=int(longest),
            dataset=f"shoggoth persona battery: {personas} personas, "
            f"{prompts} system prompts, {items} items; the "
            "activations are on the answer tokens",
            notes=about,
            createdAt=at,
        ),
    }


def explanation_types(at: str, creator: str) -> list[ExplanationType]:
    """The two explanation types the explanation rows name."""
    return [
        ExplanationType(
            LABEL_TYPE,
            "shoggoth label",
            "shoggoth's label of the feature across personas (mask-specific, "
            "shared, …), its estimated false discovery rate and the persona it "
            "prefers",
            creatorId=creator,
            createdAt=at,
            updatedAt=at,
        ),
        ExplanationType(
            EXPLAIN_TYPE,
            "shoggoth explain",
            "an explanation written by a language model from the feature's "
            "examples, scored by detection and fuzzing on held-out windows",
            creatorId=creator,
            createdAt=at,
            updatedAt=at,
        ),
    ]


@dataclass(frozen=True)
class Stats:
    """The fired features of the SAE, in order, with their count and largest value."""

    features: list[int]
    """Every feature that fired, ascending."""
    counts: dict[int, int]
    """Feature → tokens where it fired."""
    largest: dict[int, float]
    """Feature → its largest activation."""


def read_stats(con: duckdb.DuckDBPyConnection, sae_id: str) -> Stats:
    """One pass over the activations: which features fired, how often, how strongly."""
    found = con.execute(
        "SELECT feature::BIGINT AS f, count(*) AS n, max(value)::FLOAT AS m "
        "FROM activations WHERE sae_id = $sae GROUP BY feature ORDER BY feature",
        {"sae": sae_id},
    ).fetchnumpy()
    features = [int(f) for f in found["f"]]
    largest = f32(np.asarray(found["m"]).tolist())
    return Stats(
        features,
        dict(zip(features, (int(n) for n in found["n"]), strict=True)),
        dict(zip(features, largest, strict=True)),
    )


INTERVAL = re.compile(r"interval (\d+)/(\d+)")
"""An interval example's kind: `interval i/n` (index/catalog/build.py)."""

BIN_COUNTS = """
WITH a AS (SELECT feature, value FROM activations
           WHERE sae_id = $sae AND feature BETWEEN $lo AND $hi),
span AS (SELECT feature, min(value) AS lo, max(value) AS hi FROM a GROUP BY feature)
SELECT feature::BIGINT, bin::BIGINT, count(*)::BIGINT FROM (
    SELECT a.feature, coalesce(least($bins - 1, floor((a.value - s.lo) / nullif(s.hi - s.lo, 0)
                                                      * $bins))::INTEGER, 0) AS bin
    FROM a JOIN span s USING (feature))
GROUP BY ALL
"""
"""Firing tokens per (feature, interval), binned exactly as `shoggoth index` sampled them."""

EXAMPLES = """
SELECT * FROM (
    SELECT e.feature::BIGINT AS feature, e.kind::VARCHAR AS kind, e.rank::BIGINT AS rank,
           e.persona::VARCHAR AS persona, e.paraphrase::INTEGER AS paraphrase,
           e.item_id::VARCHAR AS item_id, e.pos::BIGINT AS pos, e.value::FLOAT AS value,
           e.bin_lo::FLOAT AS bin_lo, e.bin_hi::FLOAT AS bin_hi, d.n_tokens::BIGINT AS n_tokens,
           list(a.pos::BIGINT ORDER BY a.pos) AS fired,
           list(a.value::FLOAT ORDER BY a.pos) AS fired_values
    FROM examples e
    JOIN documents d ON d.sae_id = $sae AND d.persona::VARCHAR = e.persona
         AND d.paraphrase = e.paraphrase AND d.item_id::VARCHAR = e.item_id
    JOIN activations a ON a.sae_id = $sae AND a.feature = e.feature
         AND a.persona::VARCHAR = e.persona AND a.paraphrase = e.paraphrase
         AND a.item_id::VARCHAR = e.item_id
    WHERE e.sae_id = $sae AND e.feature BETWEEN $lo AND $hi AND a.feature BETWEEN $lo AND $hi
    GROUP BY ALL)
ORDER BY feature, kind <> 'top', bin_lo DESC NULLS FIRST, rank, kind
"""
"""A batch's examples, each with its document's length and the feature's activations in it."""


def interval_shares(
    con: duckdb.DuckDBPyConnection, sae_id: str, lo: int, hi: int, kinds: set[str], stats: Stats
) -> dict[tuple[int, str], float]:
    """(feature, kind) → the share of the feature's firing tokens in that interval, for the
    interval kinds of a batch."""
    shares: dict[tuple[int, str], float] = {}
    for bins in sorted({int(m[2]) for k in kinds if (m := INTERVAL.fullmatch(k))}):
        if bins < 1:
            continue
        for feature, b, n in con.execute(
            BIN_COUNTS, {"sae": sae_id, "lo": lo, "hi": hi, "bins": bins}
        ).fetchall():
            total = stats.counts.get(int(feature), 0)
            if total:
                shares[(int(feature), f"interval {int(b) + 1}/{bins}")] = n / total
    return shares


def window(n_tokens: int, pos: int) -> tuple[int, int]:
    """The answer's token range an example row holds: all of it, or `MAX_TOKENS` around `pos`."""
    if n_tokens <= MAX_TOKENS:
        return 0, n_tokens
    start = min(max(0, pos - MAX_TOKENS // 2), n_tokens - MAX_TOKENS)
    return start, start + MAX_TOKENS


def data_source(
    ctx: Context, kind: str, rank: int, persona: str, paraphrase: int, item: str
) -> str:
    """An example's dataSource: what made it an example, the persona, its prompt, the item."""
    prompt = clip(" ".join(ctx.prompts.get((persona, paraphrase), "").split()), PROMPT_SHOWN)
    what = f"top #{rank}" if kind == "top" else f"{kind} sample #{rank}"
    return (
        f"shoggoth {what}: persona {persona}, prompt {paraphrase} \u201c{prompt}\u201d, item {item}"
    )


def activation_rows(
    con: duckdb.DuckDBPyConnection, ctx: Context, stats: Stats, lo: int, hi: int
) -> list[Activation]:
    """The Activation rows of features lo..hi: one per example."""
    t, sae_id = ctx.plan.target, ctx.plan.sae_id
    found = con.execute(EXAMPLES, {"sae": sae_id, "lo": lo, "hi": hi}).fetchall()
    shares = interval_shares(con, sae_id, lo, hi, {r[1] for r in found}, stats)
    rows = []
    for (
        feature,
        kind,
        rank,
        persona,
        paraphrase,
        item,
        pos,
        _value,
        bin_lo,
        bin_hi,
        n_tokens,
        fired,
        fired_values,
    ) in found:
        answer = ctx.tokens.get(item, [])
        if (
            len(answer) != n_tokens
            or not 0 <= pos < n_tokens
            or any(not 0 <= p < n_tokens for p in fired)
        ):
            raise BadInput(
                f"SAE '{shown_name(sae_id)}': an example or activation of feature "
                f"{feature} lies outside its document's answer"
            )
        start, end = window(n_tokens, pos)
        values = [0.0] * (end - start)
        for p, v in zip(fired, f32(fired_values), strict=True):
            if start <= p < end:
                values[p - start] = v
        top = kind == "top"
        largest = max(values)
        row = Activation(
            id="",
            tokens=answer[start:end],
            index=str(feature),
            layer=t.source,
            modelId=t.model_id,
            maxValue=largest,
            maxValueTokenIndex=values.index(largest),
            minValue=min(values),
            values=values,
            creatorId=t.creator,
            dataSource=data_source(ctx, kind, rank, persona, paraphrase, item),
            dataIndex=f"{persona}/{paraphrase}/{item}",
            createdAt=ctx.created,
            binMin=-1.0 if top else one_f32(bin_lo),
            binMax=stats.largest[feature] if top else one_f32(bin_hi),
            binContains=-1.0 if top else shares.get((feature, kind)),
            qualifyingTokenIndex=pos - start,
        )
        rows.append(dataclasses.replace(row, id=row_id(row)))
    return rows


def grouped(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, object],
) -> dict[int, tuple[list, ...]]:
    """feature → the lists a per-feature aggregate returns after its feature column."""
    return {int(r[0]): tuple(r[1:]) for r in con.execute(sql, params).fetchall()}


def feature_rows(
    con: duckdb.DuckDBPyConnection, ctx: Context, stats: Stats, batch: list[int]
) -> list[Feature]:
    """The Feature rows of one batch of fired features."""
    t, have = ctx.plan.target, ctx.have
    params: dict[str, object] = {"sae": ctx.plan.sae_id, "lo": batch[0], "hi": batch[-1]}
    span = "sae_id = $sae AND feature BETWEEN $lo AND $hi"
    hist = (
        grouped(
            con,
            "SELECT feature::BIGINT, list(lo::FLOAT ORDER BY bin), "
            "list(hi::FLOAT ORDER BY bin), list(count::BIGINT ORDER BY bin) FROM "
            f"feature_histograms WHERE {span} GROUP BY feature",
            params,
        )
        if "feature_histograms" in have
        else {}
    )
    near = (
        grouped(
            con,
            "SELECT feature::BIGINT, list(neighbor::BIGINT ORDER BY rank), "
            f"list(cosine::FLOAT ORDER BY rank) FROM neighbors WHERE {span} "
            "GROUP BY feature",
            params,
        )
        if "neighbors" in have
        else {}
    )
    logits: dict[tuple[int, str], tuple[list, list]] = {}
    if "logit_effects" in have:
        for feature, sign, words, values in con.execute(
            "SELECT feature::BIGINT, sign::VARCHAR, list(token::VARCHAR ORDER BY rank), "
            f"list(value::FLOAT ORDER BY rank) FROM logit_effects WHERE {span} "
            "GROUP BY feature, sign",
            params,
        ).fetchall():
            logits[(int(feature), sign)] = (words, values)
    rows = []
    for feature in batch:
        lows, highs, counts = hist.get(feature, ([], [], []))
        neighbours, cosines = near.get(feature, ([], []))
        promoted = logits.get((feature, "promoted"), ([], []))
        suppressed = logits.get((feature, "suppressed"), ([], []))
        rows.append(
            Feature(
                modelId=t.model_id,
                layer=t.source,
                index=str(feature),
                creatorId=t.creator,
                createdAt=ctx.created,
                maxActApprox=stats.largest[feature],
                topkCosSimIndices=[int(n) for n in neighbours],
                topkCosSimValues=f32(cosines),
                neg_str=list(suppressed[0]),
                neg_values=f32(suppressed[1]),
                pos_str=list(promoted[0]),
                pos_values=f32(promoted[1]),
                frac_nonzero=stats.counts[feature] / max(1, ctx.measured),
                freq_hist_data_bar_heights=[float(c) for c in counts],
                freq_hist_data_bar_values=f32(
                    [(a + b) / 2 for a, b in zip(lows, highs, strict=True)]
                ),
                sourceSetName=t.source_set,
            )
        )
    return rows


def label_text(label: str, persona: str | None, fdr: float | None, manual: bool) -> str:
    """The label as an explanation: `mask-specific: pirate (FDR 0.03)`."""
    text = label + (f": {persona}" if persona else "")
    if manual:
        return text + " (manual label)"
    return text + (f" (FDR {fdr:.2g})" if fdr is not None else "")


def explanation_rows(
    con: duckdb.DuckDBPyConnection,
    ctx: Context,
    batch: list[int],
) -> list[Explanation]:
    """The Explanation rows of one batch: shoggoth's label (not for dead features) and
    `shoggoth explain`'s explanation, where they exist."""
    t, have, fired = ctx.plan.target, ctx.have, set(batch)
    params: dict[str, object] = {"sae": ctx.plan.sae_id, "lo": batch[0], "hi": batch[-1]}
    found: list[tuple[int, str, str, str | None]] = []
    if {"features", "annotations"} <= have:
        fdr = "NULL::DOUBLE"
        join = ""
        if "label_fdr" in have:
            fdr, join = (
                "r.fdr::DOUBLE",
                "LEFT JOIN label_fdr r ON r.sae_id = l.sae_id AND r.label = l.auto_label",
            )
        for feature, label, manual, top, family, rate in con.execute(
            f"SELECT l.feature::BIGINT, l.label::VARCHAR, l.manual_label IS NOT NULL, "
            f"l.top_persona::VARCHAR, l.family_set::VARCHAR, {fdr} FROM feature_labels l "
            f"{join} WHERE l.sae_id = $sae AND l.feature BETWEEN $lo AND $hi "
            "ORDER BY l.feature",
            params,
        ).fetchall():
            if label is None or label == "dead":
                continue
            persona = top if label in PERSONA_LABELS else family if label == "mask-family" else None
            notes = (
                "manual label (annotations)"
                if manual
                else f"shoggoth label; FDR of '{label}': {rate:.3g}"
                if rate is not None
                else "shoggoth label"
            )
            found.append(
                (int(feature), LABEL_TYPE, label_text(label, persona, rate, manual), notes)
            )
    if "feature_explanations" in have:
        for feature, text, explainer, scorer, det, det_n, fuzz, fuzz_n in con.execute(
            "SELECT feature::BIGINT, explanation::VARCHAR, explainer::VARCHAR, "
            "scorer::VARCHAR, detection::DOUBLE, detection_n::BIGINT, fuzzing::DOUBLE, "
            "fuzzing_n::BIGINT FROM feature_explanations "
            "WHERE sae_id = $sae AND feature BETWEEN $lo AND $hi ORDER BY feature",
            params,
        ).fetchall():
            scores = "; ".join(
                f"{name} {value:.2f} (n={n})"
                for name, value, n in (("detection", det, det_n), ("fuzzing", fuzz, fuzz_n))
                if value is not None
            )
            found.append(
                (
                    int(feature),
                    EXPLAIN_TYPE,
                    text,
                    f"explainer {explainer}; scorer {scorer}" + (f"; {scores}" if scores else ""),
                )
            )
    rows = []
    for feature, kind, text, note in sorted(found, key=lambda r: (r[0], r[1])):
        if feature not in fired or not isinstance(text, str) or not text.strip():
            continue
        row = Explanation(
            id="",
            modelId=t.model_id,
            layer=t.source,
            index=str(feature),
            description=text,
            authorId=t.creator,
            typeName=kind,
            notes=note,
            createdAt=ctx.created,
        )
        rows.append(dataclasses.replace(row, id=row_id(row)))
    return rows


def batches(features: list[int]) -> Iterator[list[int]]:
    """The fired features in runs of `FEATURES_PER_BATCH`."""
    for start in range(0, len(features), FEATURES_PER_BATCH):
        yield features[start : start + FEATURES_PER_BATCH]


def write_export(con: duckdb.DuckDBPyConnection, db: Path, the_plan: Plan, built: Path) -> Written:
    """The export of `the_plan` into `built` (which exists and is empty); returns what it
    holds. A value the database holds of the wrong kind is BadInput in one line."""
    try:
        return _write_export(con, db, the_plan, built)
    except duckdb.Error as e:
        raise BadInput(f"--db {db}: cannot be exported to Neuronpedia: {first_line(e)}") from None


def _write_export(con: duckdb.DuckDBPyConnection, db: Path, the_plan: Plan, built: Path) -> Written:
    """`write_export`'s work: the four metadata files, the explanation types, the batches, then
    the marker."""
    ctx = read_context(con, the_plan)
    folder = built / the_plan.target.folder
    for sub in ("features", "activations", "explanations"):
        (folder / sub).mkdir(parents=True)
    for name, row in release_rows(con, ctx).items():
        write_rows(folder / name, [row])
    write_rows(
        folder / "explanation_type.jsonl", explanation_types(ctx.created, the_plan.target.creator)
    )
    stats = read_stats(con, the_plan.sae_id)
    n_activations = n_explanations = n_batches = 0
    for n, batch in enumerate(batches(stats.features)):
        name = f"batch-{n}.jsonl.gz"
        acts = activation_rows(con, ctx, stats, batch[0], batch[-1])
        notes = explanation_rows(con, ctx, batch)
        write_rows(folder / "features" / name, feature_rows(con, ctx, stats, batch))
        write_rows(folder / "activations" / name, acts)
        write_rows(folder / "explanations" / name, notes)
        n_activations, n_explanations = n_activations + len(acts), n_explanations + len(notes)
        n_batches += 1
    written = Written(the_plan, len(stats.features), n_activations, n_explanations, n_batches)
    t = the_plan.target
    (built / MARKER).write_text(
        json.dumps(
            {
                "source": str(db.resolve()),
                "sae_id": the_plan.sae_id,
                "modelId": t.model_id,
                "layer": t.source,
                "sourceSet": t.source_set,
                "exported_at": ctx.created,
                "features": written.features,
                "activations": n_activations,
                "explanations": n_explanations,
                "batches": n_batches,
                "folder": str(t.folder),
            },
            indent=1,
        )
        + "\n"
    )
    return written
