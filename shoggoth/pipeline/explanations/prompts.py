"""What `shoggoth explain` shows a language model, and how its explanations are scored.

The explainer sees a feature's strongest and interval examples (each a window of the answer
around the token where it fired, every firing token marked <<like this>>) and the feature's mean
activation per persona, and writes one short explanation. Held-out windows, never shown to
the explainer, then score it the way the automated-interpretability papers and delphi do:

- detection: given the explanation and an unmarked window, does the feature fire in it? Half
  the windows are held-out firing windows, half windows of answers where the feature never
  fires (under any persona).
- fuzzing: given the explanation and a held-out firing window with some tokens marked, are the
  marked tokens where it fires? Each window is shown once marked right and once with the same
  number of other tokens marked.

Each score is the AUC of the judge's yes-versus-no margins, positives against negatives: 0.5 is
chance, 1 perfect. For a judge that only answers yes or no it is the balanced accuracy; for a
local model, whose margin is a logit difference, it does not depend on the model's bias towards
one answer (SmolLM2 says "No" to nearly everything).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shoggoth.sae.llm_clients import Explainer, Message

MARK = "<<{}>>"
PROMPT_VERSION = 2
"""Bumped whenever a prompt changes: stored with each explanation, so a rerun re-explains."""


@dataclass(frozen=True)
class Window:
    """A stretch of one answer: its tokens (readable) and the feature's activation on each."""

    item_id: str
    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    @property
    def firing(self) -> list[int]:
        return [i for i, a in enumerate(self.acts) if a > 0]

    def text(self, marked: list[int] | None = None) -> str:
        """The window's text, the `marked` tokens as <<token>> (their leading space outside)."""
        marked_set = set(marked or [])
        return "".join(
            t[: len(t) - len(t.lstrip())] + MARK.format(t.strip())
            if i in marked_set and t.strip()
            else t
            for i, t in enumerate(self.tokens)
        ).strip()


@dataclass
class Evidence:
    """What is known of one feature before it is explained."""

    feature: int
    shown: list[Window]
    """Examples for the explainer: the strongest first, then one per activation interval."""
    held_out: list[Window]
    """Firing windows kept for scoring."""
    silent: list[Window]
    """Windows of answers where it never fires, for detection."""
    persona_means: list[tuple[str, float]]
    """(persona, mean activation), highest first (empty before `shoggoth label`)."""


def explanation_messages(ev: Evidence) -> list[Message]:
    lines = [f"{i + 1}. {w.text(w.firing)}" for i, w in enumerate(ev.shown)]
    personas = ""
    if ev.persona_means:
        personas = (
            "\n\nMean activation under each system-prompt persona (highest first): "
            + ", ".join(f"{p} {m:.3g}" for p, m in ev.persona_means[:6])
            + "."
        )
    return [
        {
            "role": "system",
            "content": "You explain what a neuron-like feature of a language "
            "model detects. Answer with one short phrase.",
        },
        {
            "role": "user",
            "content": "Here are text excerpts where the feature is active; "
            "the tokens where it fires "
            "are marked <<like this>>.\n\n"
            + "\n".join(lines)
            + personas
            + "\n\nIn at most 12 words, what does the feature detect?",
        },
    ]


def clean_explanation(text: str) -> str:
    """The first line of the answer, without a leading label or quotes, at most 200 characters."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "").strip()
    for prefix in ("Explanation:", "The feature detects", "This feature detects"):
        if line.lower().startswith(prefix.lower()):
            line = line[len(prefix) :].strip(" :")
    return line.strip(" \"'“”")[:200]


def detection_messages(explanation: str, window: Window) -> list[Message]:
    return [
        {
            "role": "user",
            "content": f"A feature of a language model detects: {explanation}\n\n"
            f"Text: {window.text()}"
            "\n\nDoes this feature fire on some word of the text? Answer Yes or No.",
        }
    ]


def fuzzing_messages(explanation: str, window: Window, marked: list[int]) -> list[Message]:
    return [
        {
            "role": "user",
            "content": f"A feature of a language model detects: {explanation}\n\nText: "
            f"{window.text(marked)}\n\nAre the words marked <<like this>> the ones this "
            "feature would fire on? Answer Yes or No.",
        }
    ]


def wrong_marks(window: Window, rng: random.Random) -> list[int] | None:
    """As many marked tokens as the window has firing ones, all elsewhere (None: no room)."""
    firing = window.firing
    others = [i for i in range(len(window.tokens)) if i not in firing and window.tokens[i].strip()]
    if len(others) < len(firing) or not firing:
        return None
    return sorted(rng.sample(others, len(firing)))


@dataclass
class Score:
    """How well the judge tells the two classes apart, and what that rests on."""

    value: float | None
    """The AUC of the judge's margins (positives above negatives; ties count half). For yes/no
    answers it equals the balanced accuracy. None when a class had no example."""
    n: int
    """Judgments made."""
    hits: tuple[int, int]
    """Yes on the positives and no on the negatives (margin above / not above 0)."""
    sizes: tuple[int, int]
    """Examples of each class."""


def auc_score(pos: list[float], neg: list[float]) -> Score:
    """The AUC of margins `pos` (should be high) against `neg` (should be low)."""
    hits = (sum(m > 0 for m in pos), sum(m <= 0 for m in neg))
    value = None
    if pos and neg:
        value = float(
            sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        )
    return Score(value, len(pos) + len(neg), hits, (len(pos), len(neg)))


def score_detection(judge: Explainer, explanation: str, ev: Evidence) -> Score:
    margins = judge.judge_many(
        [detection_messages(explanation, w) for w in ev.held_out + ev.silent]
    )
    return auc_score(margins[: len(ev.held_out)], margins[len(ev.held_out) :])


def score_fuzzing(judge: Explainer, explanation: str, ev: Evidence, seed: int) -> Score:
    rng = random.Random(seed * 1_000_003 + ev.feature)
    right, wrong = [], []
    for w in ev.held_out:
        marks = wrong_marks(w, rng)
        if marks is not None:
            right.append(fuzzing_messages(explanation, w, w.firing))
            wrong.append(fuzzing_messages(explanation, w, marks))
    margins = judge.judge_many(right + wrong)
    return auc_score(margins[: len(right)], margins[len(right) :])


def calls_per_feature(held_out: int) -> int:
    """Requests one feature costs at most: one explanation, 2 × held_out detection judgments
    (half of them on silent windows) and 2 × held_out fuzzing judgments."""
    return 1 + 4 * held_out
