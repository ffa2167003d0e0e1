"""`SaeRecord`: the `saes` row as one frozen, typed record, read from a real DuckDB file and
from the explorer's pandas frame the same way."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pandas as pd
import pytest

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.core.errors import BadInput
from shoggoth.index.store.database import choose_sae, connect
from shoggoth.index.store.read import saes
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.index.store.schema import SAES_COLUMNS, create_schema


def test_the_record_mirrors_the_saes_table():
    assert sorted(f.name for f in dataclasses.fields(SaeRecord)) == sorted(SAES_COLUMNS)
    source = inspect.getsource(SaeRecord)
    for f in dataclasses.fields(SaeRecord):
        assert f"    {f.name}: " in source
        after = source.split(f"    {f.name}: ", 1)[1].splitlines()[1].strip()
        assert after.startswith('"""'), f"{f.name} has no docstring"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "f.duckdb"
    con = connect(path)
    create_schema(con, load_personas(), load_items())
    con.execute(
        "INSERT INTO saes (sae_id, model, hook, d_in, d_sae, value_decimals, kind, reference) "
        "VALUES ('old', 'm', 'blocks.0.hook_resid_post', 8, 32, NULL, NULL, NULL), "
        "('diff', 'm', 'blocks.1.hook_resid_post', 8, 64, 3, 'difference', '')"
    )
    yield path, con
    con.close()


def test_choose_sae_gives_the_record_with_its_defaults(db):
    path, con = db
    old = choose_sae(con, path, "old")
    assert old == SaeRecord("old", "m", "blocks.0.hook_resid_post", 8, 32)
    assert old.kind == "residual" and not old.is_difference  # a row from before kinds
    diff = choose_sae(con, path, "diff")
    assert (diff.kind, diff.reference, diff.d_sae, diff.value_decimals) == ("difference", "", 64, 3)
    assert diff.is_difference
    with pytest.raises(BadInput, match="several SAEs"):
        choose_sae(con, path, None)


def test_the_explorers_frame_row_reads_as_the_same_record(db):
    path, con = db
    frame = saes(con)  # pandas: NaN for NULL in numeric columns, numpy integers
    assert isinstance(frame["d_sae"].iloc[0], np.integer)
    for sae_id in ("old", "diff"):
        row = frame.set_index("sae_id", drop=False).loc[sae_id].to_dict()
        record = SaeRecord.from_row(row)
        assert record == choose_sae(con, path, sae_id)
        assert type(record.d_sae) is int
        assert record.value_decimals is None or type(record.value_decimals) is int
    assert pd.isna(frame.set_index("sae_id").loc["old", "value_decimals"])


def test_the_record_is_frozen_and_hashable(db):
    path, con = db
    record = choose_sae(con, path, "diff")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.d_sae = 1  # type: ignore[misc]
    assert len({record, choose_sae(con, path, "diff")}) == 1  # the explorer caches by it
