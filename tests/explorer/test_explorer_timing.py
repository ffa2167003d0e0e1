"""Feature pages on a database of 65,536 features (AppTest; the render time is printed, not
asserted):
the synthetic database of benchmarks/synthetic_db.py at a small number of activations per token,
with the dictionary tables `shoggoth index` writes (examples and histograms by its own SQL;
neighbours drawn at random, as FAISS is not what is being timed)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from benchmarks.synthetic_db import SAE_ID, build  # noqa: E402
from shoggoth.index.catalog.build import EXAMPLES_SQL, HISTOGRAM_SQL  # noqa: E402
from shoggoth.index.store.schema import create_index_tables  # noqa: E402

APP = str(Path(__file__).parents[2] / "explorer" / "app.py")
FEATURES = 65_536


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> Path:
    db = build(tmp_path_factory.mktemp("big"), FEATURES, per_token=4, log=lambda m: None)
    con = duckdb.connect(str(db))
    create_index_tables(con)
    con.execute(EXAMPLES_SQL, {"sae": SAE_ID, "top": 20, "bins": 10, "per_bin": 5})
    con.execute(HISTOGRAM_SQL, {"sae": SAE_ID, "bins": 50})
    con.execute(
        """INSERT INTO neighbors SELECT $sae, f.range, r.range + 1,
                          (hash(f.range, r.range) % $n)::INTEGER, 0.5 - r.range / 40
                   FROM range($n) f, range(10) r""",
        {"sae": SAE_ID, "n": FEATURES},
    )
    con.execute("UPDATE saes SET logit_effects = 'skipped: not a causal LM'")
    con.close()
    return db


def test_feature_pages_render_on_65536_features(big_db):
    """Every page renders its feature (the render time is printed; benchmarks/query_latency.py
    measures it)."""
    con = duckdb.connect(str(big_db), read_only=True)
    n = con.execute("SELECT count(*) FROM features").fetchone()[0]
    live = [
        f
        for (f,) in con.execute(
            "SELECT DISTINCT feature FROM examples ORDER BY feature LIMIT 2000"
        ).fetchall()
    ][::200]
    con.close()
    assert n == FEATURES and len(live) >= 8
    os.environ["SHOGGOTH_DB"] = str(big_db)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()  # the app and the store are loaded once, as in a running explorer
    at.query_params["feature"] = str(live[0])
    at.switch_page("views/feature.py").run()
    times = []
    for feature in live[1:]:  # each feature's page for the first time: no cached query helps
        at.query_params["feature"] = str(feature)
        at.switch_page("views/feature.py")
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value.startswith(f"Feature {feature} ·"), at.title[0].value
        assert "Top activations in context" in [s.value for s in at.subheader]
    median = statistics.median(times)
    print(
        f"\nfeature page, {FEATURES:,} features: median {median * 1000:.0f} ms, max "
        f"{max(times) * 1000:.0f} ms over {len(times)} features"
    )
    from shoggoth.explorer.common import store_for

    store_for(str(big_db.resolve())).close()
