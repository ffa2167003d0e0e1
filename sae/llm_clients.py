"""The language models that explain and score features (`shoggoth explain`): any
OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, `transformers serve`, a hosted API
with its key from the environment), or a local Hugging Face instruct model run here (SmolLM2,
offline, by default).

Both answer two kinds of request: `chat` (free text: an explanation) and `judge` (does this
text show the feature?), whose answer is a margin: above 0 means yes. A local model's margin is
the next-token logit of "Yes" minus that of "No" after the assistant header, so its scores can
be ranked whatever its bias towards one answer; an endpoint writes up to three tokens, which
must start with yes (+1) or no (-1). Judgments come in batches: a local model runs 16 prompts
per forward pass, an endpoint gets 4 requests at a time. A failure (unreachable, timed out, an
error status, an answer that is neither) raises ExplainerError with one line, never a made-up
answer.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httpx
import torch

from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.placement import Placement
from shoggoth.sae.generation import decode, generate_batch, load_generator
from shoggoth.sae.prompts import Prompt, collate, pad_id

Message = dict[str, str]
YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


class ExplainerError(Exception):
    """One request failed; the message is one line naming the explainer and the problem."""


class Explainer(Protocol):
    name: str
    """What produced the text: 'local:DIR' or the endpoint's URL and model."""

    def chat(self, messages: list[Message], max_tokens: int) -> str: ...

    def judge(self, messages: list[Message]) -> float: ...

    def judge_many(self, requests: list[list[Message]]) -> list[float]: ...


def parse_yes_no(text: str, who: str) -> bool:
    """True for an answer starting with yes, False for no; ExplainerError otherwise."""
    m = YES_NO.match(text)
    if m is None:
        raise ExplainerError(f"{who}: answered {text.strip()[:40]!r}, not yes or no")
    return m.group(1).lower() == "yes"


@dataclass
class LocalChat:
    """A local causal LM with a chat template, greedy."""

    model: str
    device: str = "auto"
    placement: Placement | None = None
    """A device map to spread the model over several devices (None: all on `device`)."""
    gen: Any = field(init=False)
    yes_no_ids: tuple[list[int], list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.gen = load_generator(self.model, self.device, self.placement)
        if not getattr(self.gen.tokenizer, "chat_template", None):
            raise BadInput(
                f"--explainer {self.model}: has no chat template (an instruct model is needed)"
            )
        self.name = f"local:{self.model}"
        vocab = self.gen.tokenizer

        def first_ids(words: list[str]) -> list[int]:
            return sorted({vocab.encode(w, add_special_tokens=False)[0] for w in words})

        self.yes_no_ids = (first_ids(["Yes", " Yes", "yes"]), first_ids(["No", " No", "no"]))

    def _ids(self, messages: list[Message]) -> list[int]:
        return cast(
            "list[int]",
            self.gen.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            ),
        )

    def chat(self, messages: list[Message], max_tokens: int) -> str:
        ids = self._ids(messages)
        [(out, _)] = generate_batch(self.gen, [], [], [list(ids)], max_tokens)
        return decode(self.gen, out)

    def judge(self, messages: list[Message]) -> float:
        return self.judge_many([messages])[0]

    def judge_many(self, requests: list[list[Message]], batch: int = 16) -> list[float]:
        """Margins of several judgments, `batch` prompts per forward pass: left-padded, the
        padding masked and positions counted from the mask, so each equals its own pass."""
        out: list[float] = []
        for start in range(0, len(requests), batch):
            rows = [self._ids(m) for m in requests[start : start + batch]]
            b = collate(
                [Prompt(r, [False] * len(r), "chat") for r in rows],
                pad_id(self.gen.tokenizer),
                "left",
            ).to(self.gen.device)
            pos = (b.attention_mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = (
                    self.gen.hf(
                        input_ids=b.input_ids,
                        attention_mask=b.attention_mask,
                        position_ids=pos,
                        logits_to_keep=1,
                    )
                    .logits[:, -1]
                    .float()
                )
            yes = logits[:, self.yes_no_ids[0]].max(-1).values
            no = logits[:, self.yes_no_ids[1]].max(-1).values
            out += (yes - no).tolist()
        return out


@dataclass
class Endpoint:
    """An OpenAI-compatible chat completions endpoint (`url` ends in /v1), temperature 0."""

    url: str
    model: str | None = None
    """The model to ask for (default: the first the server lists)."""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    concurrency: int = 4
    """Requests in flight at once."""
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            base_url=self.url, headers=headers, timeout=self.timeout or None
        )  # (0: no limit)
        if self.model is None:
            listed = self._request("GET", "/models").get("data") or []
            if not listed:
                raise ExplainerError(f"{self.url}: lists no model; pass --explainer-model")
            self.model = listed[0]["id"]
        self.name = f"{self.url} {self.model}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.TimeoutException:
            raise ExplainerError(f"{self.url}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise ExplainerError(f"{self.url}: {first_line(e)}") from None
        if response.status_code != 200:
            raise ExplainerError(
                f"{self.url}{path}: HTTP {response.status_code}: "
                f"{' '.join(response.text.split())[:120]}"
            )
        try:
            return response.json()
        except ValueError:
            raise ExplainerError(f"{self.url}{path}: the answer is not JSON") from None

    def chat(self, messages: list[Message], max_tokens: int) -> str:
        out = self._request(
            "POST",
            "/chat/completions",
            {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0},
        )
        try:
            return out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ExplainerError(f"{self.url}: a chat completion without a message") from None

    def judge(self, messages: list[Message]) -> float:
        return 1.0 if parse_yes_no(self.chat(messages, 3), self.name) else -1.0

    def judge_many(self, requests: list[list[Message]]) -> list[float]:
        """Several judgments, `concurrency` requests in flight at a time; the first failure
        raises (the others are not waited for)."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.judge, requests))


def open_explainer(
    spec: str,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    device: str = "auto",
    concurrency: int = 4,
    placement: Placement | None = None,
) -> Explainer:
    """An endpoint for an http(s) URL, else a local model (alias, directory or hub id);
    BadInput in one line when it cannot be reached or loaded."""
    if spec.startswith(("http://", "https://")):
        try:
            return Endpoint(spec, model, api_key_env, timeout, concurrency)
        except ExplainerError as e:
            raise BadInput(f"--explainer {spec}: {e}") from None
    return LocalChat(spec, device, placement)
