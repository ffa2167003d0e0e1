"""shoggoth.core.printing: the one JSON printer (NaN as null) and the one reader's formatter of
numbers (a missing number said as words, never printed as 'nan')."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from shoggoth.core.printing import number, plain, print_json, shown


@pytest.mark.parametrize(
    "value, expected",
    [
        (1, 1.0),
        (np.float32(0.5), 0.5),
        ("2.5", 2.5),
        (None, None),
        (float("nan"), None),
        (np.nan, None),
        (pd.NA, None),
        ("x", None),
        (math.inf, math.inf),
    ],
)
def test_number_is_none_where_nothing_was_measured(value, expected):
    assert number(value) == expected


def test_shown_formats_or_says_missing():
    assert shown(0.12345) == "0.12"
    assert shown(0.12345, ".3g") == "0.123"
    assert shown(float("nan")) == "n/a"
    assert shown(None, missing="-") == "-"
    assert shown(1234.0, ",.0f") == "1,234"


def test_json_has_no_nan(capsys):
    frame = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", "y"]})
    print_json({"rows": frame, "n": np.int64(3), "inf": math.inf})
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    assert json.loads(out) == {
        "rows": [{"a": 1.0, "b": "x"}, {"a": None, "b": "y"}],
        "n": 3,
        "inf": None,
    }
    assert plain((np.float64(2.0),)) == [2.0]
