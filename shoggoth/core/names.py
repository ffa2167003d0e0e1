"""Names that end up in SQL text or in file names: what each may look like. A name read from a
database or a received file is data written by whoever made it, so it is checked where it is
read, not only where shoggoth created it."""

from __future__ import annotations

import re

from shoggoth.core.errors import BadInput, shown

SAE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
"""What an SAE may be called in a database (`harvest --sae`): it names files and folders beside
the database (`<db>.faiss/<sae_id>.<build>/`), so no slash, no leading dot, no glob character."""

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
"""A table or column name shoggoth will put into SQL text (always double-quoted as well)."""


def shown_name(value: object, limit: int = 60) -> str:
    """A name as a message quotes it between its own quotes: `shown` (control characters
    visible, cut to `limit`), without the quotes repr puts around text."""
    text = shown(value, limit)
    return (
        text[1:-1]
        if isinstance(value, str) and text[:1] in "'\"" and text[-1:] == text[:1]
        else text
    )


def check_sae_id(value: object, where: str) -> str:
    """`value` when it is an SAE id shoggoth can use; BadInput naming `where` otherwise."""
    if not isinstance(value, str) or not SAE_ID.fullmatch(value):
        raise BadInput(
            f"{where}: the SAE id '{shown_name(value)}' is not one shoggoth accepts "
            "(letters, digits, '.', '_', '-', not starting with '.'; at most 128)"
        )
    return value


def identifier(name: object, where: str) -> str:
    """`name` double-quoted for SQL, when it is a plain identifier; BadInput naming `where`
    otherwise (a name that could close its quote is never pasted into a statement)."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise BadInput(
            f"{where}: the name '{shown_name(name)}' is not a plain SQL identifier "
            "(letters, digits and '_'); shoggoth does not use it"
        )
    return f'"{name}"'


NEURONPEDIA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}/[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
"""A Neuronpedia source id, `{modelId}/{layer}-{sourceSet}` (e.g.
gemma-3-270m-it/12-gemmascope-2-res-16k): it becomes a URL path, so nothing that could leave it."""

NEURONPEDIA = "https://neuronpedia.org"


def neuronpedia_url(neuronpedia_id: object, feature: int) -> str | None:
    """A feature's page on Neuronpedia, or None where the SAE has no well-formed id (an id read
    from a database is data: one that could leave its URL path gets no link)."""
    if not isinstance(neuronpedia_id, str) or not NEURONPEDIA_ID.fullmatch(neuronpedia_id):
        return None
    return f"{NEURONPEDIA}/{neuronpedia_id}/{int(feature)}"
