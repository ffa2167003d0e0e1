"""The persona battery: the built-in content meets the design, and bad files are one line."""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean

import pytest

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.core.errors import BadInput
from shoggoth.sae.prompts import build_prompt


def sentences(text):
    return len(re.findall(r"[.!?](\s|$)", text))


def test_builtin_personas_meet_the_design():
    personas = load_personas()
    real = [p for p in personas if not p.is_control]
    controls = [p for p in personas if p.is_control]
    assert len(real) >= 16 and len({p.family for p in real}) >= 6
    assert all(len(p.prompts) == 5 for p in real)
    names = {p.name for p in personas}
    assert len(names) == len(personas)
    # No system prompt; length-matched neutral; random words.
    none = [c for c in controls if c.prompts == ("",)]
    assert len(none) == 1
    words = mean(len(q.split()) for p in real for q in p.prompts)
    neutral = next(c for c in controls if c.name == "control_neutral")
    random_words = next(c for c in controls if c.name == "control_random_words")
    for control in (neutral, random_words):
        assert abs(mean(len(q.split()) for q in control.prompts) - words) <= 0.3 * words
    # Every persona has its own mention-don't-adopt and negated-role controls, two or more
    # paraphrases each: the labeller compares a feature with its persona's matched controls.
    for kind in ("mention", "negated"):
        matched = {c.control_of: c for c in controls if c.name.startswith(f"control_{kind}_")}
        assert set(matched) == {p.name for p in real}, kind
        assert all(len(c.prompts) >= 2 for c in matched.values())


def test_builtin_items_meet_the_design():
    items = load_items()
    assert len(items) >= 240
    per_topic = Counter(i.topic for i in items)
    assert len(per_topic) >= 12 and min(per_topic.values()) >= 10
    assert len({i.item_id for i in items}) == len(items)
    assert len({i.question for i in items}) == len(items)
    assert all(1 <= sentences(i.answer) <= 3 for i in items)


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2", "tiny_gpt2_base"])
def test_every_persona_measures_the_same_answer_tokens(which, request):
    model = request.getfixturevalue(which)
    item = load_items()[0]
    seen = set()
    for persona in load_personas():
        for prompt in persona.prompts:
            p = build_prompt(
                model.tokenizer, prompt, item.question, item.answer, prepend_bos=model.prepend_bos
            )
            seen.add(tuple(p.continuation_ids))
    assert len(seen) == 1


PERSONA = "  - name: {name}\n    family: f\n    prompts:\n      - You are {name}.\n"


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "personas:\n  - name: a\n    prompts: [unclosed\n",
            "line 4: not valid YAML (expected ',' or ']'",
        ),
        (
            "personas:\n  - name: a\n    family: f\n    prompts: []\n",
            "line 2: persona 'a' has no prompts",
        ),
        ("personas:\n  - name: a\n    family: f\n", "persona 'a' has no prompts"),
        (
            "personas:\n" + PERSONA.format(name="a") + PERSONA.format(name="a"),
            "line 6: duplicate persona 'a' (first at line 2)",
        ),
        ("personas:\n  - name: a\n    family: f\n    prompts: ['']\n", "empty prompt"),
        ("personas:\n" + PERSONA.format(name="a") + "    colour: red\n", "unknown field 'colour'"),
        ("personas:\n" + PERSONA.format(name="Bad Name"), "persona name 'Bad Name'"),
        (
            "personas:\n" + PERSONA.format(name="a") + "    is_control: true\n    control_of: zz\n",
            "unknown persona 'zz'",
        ),
        ("people: []\n", "expected a top-level 'personas:' list"),
    ],
)
def test_bad_personas_file(tmp_path, text, problem):
    path = tmp_path / "personas.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as err:
        load_personas(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)


GOOD = '{"item_id": "a", "topic": "t", "question": "Q?", "answer": "A."}'


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD + "\n{not json\n", "line 2: not valid JSON"),
        (
            '{"item_id": "a", "topic": "t", "question": "Q?", "answer": "  "}\n',
            "line 1: empty answer",
        ),
        ('{"item_id": "a", "topic": "t", "question": "", "answer": "A."}\n', "empty question"),
        ('{"item_id": "a", "topic": "t", "answer": "A."}\n', "missing field 'question'"),
        (GOOD + "\n" + GOOD + "\n", "line 2: duplicate item_id 'a' (first at line 1)"),
        ("\n\n", "holds no items"),
    ],
)
def test_bad_items_file(tmp_path, text, problem):
    path = tmp_path / "items.jsonl"
    path.write_text(text)
    with pytest.raises(BadInput) as err:
        load_items(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_user_files_replace_the_builtin_battery(tmp_path):
    (tmp_path / "p.yaml").write_text("personas:\n" + PERSONA.format(name="pilot"))
    (tmp_path / "i.jsonl").write_text(GOOD + "\n")
    assert [p.name for p in load_personas(tmp_path / "p.yaml")] == ["pilot"]
    assert load_items(tmp_path / "i.jsonl")[0].answer == "A."
