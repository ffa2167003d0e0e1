"""The one list grammar every list flag parses with (shoggoth.core.lists)."""

from __future__ import annotations

import pytest

from shoggoth.core.errors import BadInput
from shoggoth.core.lists import parse_names, parse_numbers


def test_numbers_and_ranges():
    assert parse_numbers("3,17,40-42", "--features") == [3, 17, 40, 41, 42]
    assert parse_numbers(" 5 , 2,2, 1-2", "--features") == [1, 2, 5]
    assert parse_numbers("7", "--layers", 0, 7) == [7]


@pytest.mark.parametrize(
    "text, words",
    [
        ("x", "'x' is not a number or a range"),
        ("3-", "'3-' is not a number"),
        ("-3", "'-3' is not a number"),
        ("5-2", "runs backwards"),
        ("", "empty"),
        (" , ", "empty"),
        ("1,9", "9 is outside 0 to 7"),
        ("2.5", "'2.5' is not a number"),
    ],
)
def test_bad_numbers_are_one_line_naming_the_flag(text, words):
    with pytest.raises(BadInput) as e:
        parse_numbers(text, "--features", 0, 7)
    assert str(e.value).startswith("--features") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_names():
    assert parse_names("pirate, poet,pirate", "--persona-names") == ["pirate", "poet"]
    with pytest.raises(BadInput, match="unknown 'wizard'"):
        parse_names("pirate,wizard", "--persona-names", ["pirate", "poet"])
    with pytest.raises(BadInput, match="empty"):
        parse_names(",", "--labels")
