"""Uploading a Neuronpedia export (index/store/neuronpedia.py) to a Neuronpedia instance through
its `POST /api/feature/upload-batch` API (apps/webapp/app/api/feature/upload-batch/route.tsx):
the written batch files read back, at most `UPLOAD_FEATURES` features a request, the key in
`KEY_HEADER`, retried with backoff on 429, 5xx and connection errors, redirects refused (the key
would travel with them), a refusal one `error:` line."""

from __future__ import annotations

import gzip
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from shoggoth.core.errors import BadInput, clip
from shoggoth.core.names import shown_name
from shoggoth.index.store.neuronpedia import Target

UPLOAD_PATH = "/api/feature/upload-batch"
UPLOAD_FEATURES = 128
"""Features per upload request at most (upload-batch's schema: features 1..128)."""
UPLOAD_LOGITS = 20
"""topLogits / bottomLogits per feature at most."""
UPLOAD_TEXT = 512
"""Characters of an explanation's text at most."""
UPLOAD_MAX_INDEX = 10_000_000
"""The largest feature index upload-batch accepts."""
UPLOAD_BYTES = 4 << 20
"""A request's body is kept under this many bytes (fewer features per request when the
examples are long); one feature larger than it goes alone."""
KEY_HEADER = "X-Api-Key"
"""The header the `neuronpedia` client sends the key in (requests/base_request.py)."""
KEY_ENV = "NEURONPEDIA_API_KEY"
TRIES = 4
"""Attempts per request: retried on 429, 5xx and connection errors."""
BACKOFF_S = 1.0
"""The first wait between attempts; it doubles each time (a Retry-After up to
`RETRY_AFTER_MAX_S` is honoured instead)."""
RETRY_AFTER_MAX_S = 60.0
TIMEOUT_S = 120.0
"""Seconds one request may take."""


def check_url(url: str) -> str:
    """The upload endpoint of a Neuronpedia instance at `url` (http or https, a host, no query;
    a trailing /api, as the neuronpedia client's base URL has it, is allowed); BadInput
    otherwise."""
    parts = urllib.parse.urlsplit(url.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise BadInput(
            f"--neuronpedia-url '{shown_name(url)}': not the http(s) address of a "
            "Neuronpedia instance (e.g. https://www.neuronpedia.org)"
        )
    path = parts.path.rstrip("/")
    path = path[: -len("/api")] if path.endswith("/api") else path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")) + UPLOAD_PATH


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of one batch file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line.strip()
    ]


def nonempty(token: str) -> str:
    """A token as upload-batch takes it: its schema refuses an empty string, so "" becomes " "."""
    return token or " "


def upload_activation(row: dict) -> dict:
    """An Activation row as upload-batch takes it (a top example has no quantile)."""
    top = row.get("binMin") == -1
    return {
        "tokens": [nonempty(t) for t in row["tokens"]],
        "values": row["values"],
        "quantileMax": None if top else row.get("binMax"),
        "quantileMin": None if top else row.get("binMin"),
        "quantileFraction": None if top else row.get("binContains"),
    }


def upload_features(folder: Path, typed: bool) -> Iterator[dict]:
    """The export's features as upload-batch takes them, in order; a feature without an example
    is left out (upload-batch needs one)."""
    for path in sorted(
        (folder / "features").glob("batch-*.jsonl.gz"),
        key=lambda p: int(p.name.split("-")[1].split(".")[0]),
    ):
        acts: dict[str, list[dict]] = {}
        for row in read_rows(folder / "activations" / path.name):
            acts.setdefault(row["index"], []).append(upload_activation(row))
        notes: dict[str, list[dict]] = {}
        for row in read_rows(folder / "explanations" / path.name):
            notes.setdefault(row["index"], []).append(
                {
                    "text": clip(row["description"], UPLOAD_TEXT),
                    "methodName": row["typeName"] if typed else None,
                    "modelName": None,
                }
            )
        for row in read_rows(path):
            if not acts.get(row["index"]):
                continue
            index = int(row["index"])
            if index > UPLOAD_MAX_INDEX:
                raise BadInput(
                    f"--neuronpedia-url: feature {index} is above upload-batch's "
                    f"largest index ({UPLOAD_MAX_INDEX:,}); import the export instead"
                )
            yield {
                "index": index,
                "density": min(1.0, max(0.0, row["frac_nonzero"])),
                "topLogits": [
                    {"token": nonempty(s), "value": v}
                    for s, v in zip(row["pos_str"], row["pos_values"], strict=True)
                ][:UPLOAD_LOGITS],
                "bottomLogits": [
                    {"token": nonempty(s), "value": v}
                    for s, v in zip(row["neg_str"], row["neg_values"], strict=True)
                ][:UPLOAD_LOGITS],
                "explanations": notes.get(row["index"], []),
                "activations": acts[row["index"]],
            }


def requests_of(
    features: Iterator[dict], model_id: str, source: str
) -> Iterator[tuple[int, bytes]]:
    """Request bodies with their feature counts: at most `UPLOAD_FEATURES` features and, where
    it can, at most `UPLOAD_BYTES` each."""
    head = len(json.dumps({"modelId": model_id, "source": source, "features": []}))
    batch: list[bytes] = []
    size = head

    def body() -> tuple[int, bytes]:
        start = (
            f'{{"modelId": {json.dumps(model_id)}, "source": {json.dumps(source)}, "features": ['
        ).encode()
        return len(batch), start + b", ".join(batch) + b"]}"

    for feature in features:
        text = json.dumps(feature, ensure_ascii=False, allow_nan=False).encode()
        if batch and (len(batch) == UPLOAD_FEATURES or size + len(text) + 2 > UPLOAD_BYTES):
            yield body()
            batch, size = [], head
        batch.append(text)
        size += len(text) + 2
    if batch:
        yield body()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the key would go with the request to wherever it points."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


def server_message(body: bytes) -> str:
    """What a refusal says: its JSON `error` (or `message`), else its text, made inert (control
    characters shown as escapes) and cut short."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("error") or data.get("message") or text)
    except (ValueError, RecursionError):
        pass
    return shown_name(" ".join(text.split()), 200) or "(empty)"


def error_body(error: urllib.error.HTTPError) -> bytes:
    """The start of an error response's body (empty when it cannot be read)."""
    try:
        return error.read(4096) if error.fp is not None else b""
    except (OSError, http.client.HTTPException):
        return b""


def retry_wait(attempt: int, headers: Message | None) -> float:
    """Seconds before the next attempt: the server's Retry-After (bounded), else the doubling
    backoff."""
    after = headers.get("Retry-After") if headers is not None else None
    if after is not None and after.strip().isdigit():
        return min(float(after), RETRY_AFTER_MAX_S)
    return BACKOFF_S * 2.0**attempt


def post(
    opener: urllib.request.OpenerDirector,
    endpoint: str,
    key: str,
    body: bytes,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """POST one batch, retried on 429, 5xx and connection errors up to `TRIES` times; BadInput
    in one line on any other refusal, a redirect, or when the tries run out."""
    last = ""
    for attempt in range(TRIES):
        request = urllib.request.Request(
            endpoint,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                KEY_HEADER: key,
                "User-Agent": "shoggoth-export",
            },
        )
        headers: Message | None = None
        try:
            with opener.open(request, timeout=TIMEOUT_S) as response:
                response.read(1 << 20)
            return
        except urllib.error.HTTPError as e:
            message = server_message(error_body(e))
            if e.code != 429 and e.code < 500:
                moved = (
                    f" to {shown_name(e.headers.get('Location', ''), 120)}"
                    if 300 <= e.code < 400
                    else ""
                )
                raise BadInput(
                    f"--neuronpedia-url: the server refused {what} (HTTP {e.code}"
                    f"{moved}: {message})"
                ) from None
            last, headers = f"HTTP {e.code}: {message}", e.headers
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            last = f"cannot reach it: {shown_name(str(reason) or type(e).__name__, 160)}"
        if attempt + 1 < TRIES:
            sleep(retry_wait(attempt, headers))
    hint = (
        "; a 500 also answers a source set you do not own or explanation types the "
        "instance lacks (--neuronpedia-untyped)"
        if last.startswith("HTTP 500")
        else ""
    )
    raise BadInput(f"--neuronpedia-url: {what} failed {TRIES} times ({last}{hint})")


@dataclass(frozen=True)
class Uploaded:
    """What an upload sent."""

    endpoint: str
    """Where."""
    features: int
    """Features uploaded."""
    requests: int
    """Requests that succeeded."""


def upload(folder: Path, target: Target, url: str, key: str, typed: bool) -> Uploaded:
    """Upload the export in `folder` (DIR/{modelId}/{source}) to the instance at `url`, batch
    by batch. A refusal stops it with BadInput naming the batch and what came before it."""
    endpoint = check_url(url)
    opener = urllib.request.build_opener(NoRedirect())
    sent = done = 0
    for n, (count, body) in enumerate(
        requests_of(upload_features(folder, typed), target.model_id, target.source), 1
    ):
        try:
            post(opener, endpoint, key, body, f"request {n} ({count} features)")
        except BadInput as e:
            raise BadInput(
                f"{e} after {sent:,} features were uploaded; the export in {folder} is written"
            ) from None
        sent, done = sent + count, n
    return Uploaded(endpoint, sent, done)
