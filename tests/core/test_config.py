"""Configs validate themselves: required fields, bounds, finite floats and cross-field rules, for
values from flags and from `--config FILE.yaml` alike (YAML values go through the flags' click
types). Also the pure helpers the commands rely on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from shoggoth.battery.units import parse_shard
from shoggoth.core.config import Config, load_config, option, read_config_file
from shoggoth.core.errors import BadInput, clip, shown
from shoggoth.index.catalog.build import IndexConfig
from shoggoth.index.labels.rules import LabelConfig
from shoggoth.index.labels.run import LabelRunConfig
from shoggoth.index.labels.stats import contrast, equivalence, permutation_design, persona_test
from shoggoth.index.store.merge import MergeConfig
from shoggoth.index.store.sql import SqlConfig, size_bytes
from shoggoth.pipeline.harvest.run import HarvestConfig
from shoggoth.pipeline.search.run import SearchConfig
from shoggoth.sae.encode import decimals_for, shared_prefix
from shoggoth.sae.prompts import Prompt
from shoggoth.sae.train.run import TrainConfig


@dataclass
class Example(Config):
    db: Path | None = option(required="the database")
    """A file."""
    n: int = option(3, min=1, max=10)
    """A count."""
    rate: float = option(0.5, above=0, below=1)
    """A rate."""
    name: str = "x"
    """A name."""
    flag: bool = False
    """A switch."""
    files: list[Path] = field(default_factory=list)
    """Some files."""

    def check(self) -> None:
        if self.name == "bad":
            raise BadInput("--name bad: not allowed")


def yaml_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_required_bounds_finite_and_check():
    assert Example(db=Path("a")).n == 3
    with pytest.raises(BadInput, match=r"^--db: required \(the database\)$"):
        Example()
    for kwargs, message in [
        ({"n": 0}, "--n 0: must be at least 1"),
        ({"n": 11}, "--n 11: must be at most 10"),
        ({"rate": 0.0}, "--rate 0.0: must be greater than 0"),
        ({"rate": 1.0}, "--rate 1.0: must be less than 1"),
        ({"rate": math.nan}, "--rate nan: must be a finite number"),
        ({"rate": math.inf}, "--rate inf: must be a finite number"),
        ({"name": "bad"}, "--name bad: not allowed"),
    ]:
        with pytest.raises(BadInput) as e:
            Example(db=Path("a"), **kwargs)
        assert str(e.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("db: 5", "option 'db': expected a string, got 5"),
        ("n: abc", "option 'n': expected an integer, got 'abc'"),
        ("n: true", "option 'n': expected an integer, got True"),
        ("n: 1.5", "option 'n': expected an integer, got 1.5"),
        ("rate: [1]", "option 'rate': expected a number, got [1]"),
        ("flag: 3", "option 'flag': expected true or false, got 3"),
        ("files: 7", "option 'files': expected a list, got 7"),
        ("files: [a.duckdb, 7]", "option 'files': expected a string, got 7"),
        # one text for a list of paths: `a.duckdb b.duckdb` would be one file with a space in it
        ("files: a.duckdb", "option 'files': expected a list, got 'a.duckdb'"),
        ("n: 0", "--n 0: must be at least 1"),
        ("rate: .nan", "--rate nan: must be a finite number"),
        ("colour: red", "unknown option 'colour'"),
        ("- a\n- b", "expected a mapping of option names to values"),
        ("n: [", "not valid YAML"),
    ],
)
def test_yaml_values_are_converted_and_checked(tmp_path, text, message):
    path = yaml_file(tmp_path, text)
    with pytest.raises(BadInput) as e:
        load_config(Example, path, {"db": Path("x")})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_yaml_values_convert_like_flags(tmp_path):
    path = yaml_file(tmp_path, "db: x.duckdb\nn: 4\nrate: 0.25\nflag: true\nfiles: [a.duckdb]\n")
    cfg = load_config(Example, path, {"n": 5})  # the flag wins
    assert cfg == Example(db=Path("x.duckdb"), n=5, rate=0.25, flag=True, files=[Path("a.duckdb")])
    assert isinstance(cfg.db, Path)


def test_config_file_problems_are_one_line(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        read_config_file(Example, tmp_path / "missing.yaml")
    with pytest.raises(BadInput, match="not UTF-8"):
        read_config_file(Example, yaml_file(tmp_path, b"n: \xff\xfe\n"))
    with pytest.raises(BadInput, match="is a directory"):
        read_config_file(Example, tmp_path)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: HarvestConfig(sae_dir=[Path("s")]), "--db: required"),
        (lambda: HarvestConfig(db=Path("d")), "--sae-dir: required"),
        (lambda: HarvestConfig(db=Path("d"), sae_dir=[Path("s")], batch=0), "--batch 0"),
        (lambda: HarvestConfig(db=Path("d"), sae_dir=[Path("s")], shard="3/2"), "--shard 3/2"),
        (lambda: HarvestConfig(db=Path("d"), sae_dir=[Path("s")], sae="a b"), "--sae 'a b'"),
        (
            lambda: HarvestConfig(db=Path("d"), sae_dir=[Path("s")], value_decimals=10),
            "--value-decimals",
        ),
        (lambda: LabelRunConfig(db=Path("d"), chunk=0), "--chunk 0"),
        (lambda: LabelRunConfig(db=Path("d"), bootstrap=-1), "--bootstrap -1"),
        (lambda: LabelRunConfig(db=Path("d"), confidence=2.0), "--confidence 2.0"),
        (lambda: LabelRunConfig(db=Path("d"), alpha=5.0), "--alpha 5.0"),
        (lambda: LabelRunConfig(db=Path("d"), alpha=math.nan), "--alpha nan"),
        (lambda: IndexConfig(db=Path("d"), histogram_bins=2147483648), "--histogram-bins"),
        (lambda: IndexConfig(db=Path("d"), exact_max=-1), "--exact-max -1"),
        (lambda: SqlConfig(db=Path("d"), query=["SELECT 1"], max_rows=-1), "--max-rows -1"),
        (lambda: SqlConfig(db=Path("d")), "query: required"),
        (lambda: SqlConfig(db=Path("d"), query=["SELECT 1"], format="parquet"), "needs --out"),
        (lambda: MergeConfig(db=Path("d")), "inputs: required"),
        (lambda: TrainConfig(lr=math.nan), "--lr nan"),
        (lambda: TrainConfig(lr=math.inf), "--lr inf"),
        (lambda: TrainConfig(lr=0.0), "--lr 0.0"),
        (lambda: TrainConfig(k=64, d_sae=32), "--k 64: must be smaller than --d-sae 32"),
        (lambda: SearchConfig(db=Path("d")), "search: give --text"),
        (lambda: SearchConfig(db=Path("d"), similar=True, persona="p"), "--similar: needs"),
    ],
)
def test_command_configs_check_themselves(build, message):
    with pytest.raises(BadInput) as e:
        build()
    assert message in str(e.value)


def test_label_thresholds_default_to_the_documented_values():
    c = LabelConfig()
    assert (c.alpha, c.min_docs, c.bootstrap, c.confidence) == (0.05, 20, 200, 0.95)
    assert not hasattr(c, "test")  # the flag with one possible value is gone


def test_parse_shard():
    assert parse_shard(None) == (0, 1)
    assert parse_shard(" 2/4 ") == (2, 4)
    for bad in ("4/4", "1/0", "-1/3", "a/b", "1/2/3", "1"):
        with pytest.raises(BadInput, match="--shard"):
            parse_shard(bad)


def test_shared_prefix_stops_before_the_first_measured_token():
    def p(ids: list[int], first: int) -> Prompt:
        return Prompt(ids, [i >= first for i in range(len(ids))], "plain")

    assert shared_prefix([p([1, 2, 3, 4], 3), p([1, 2, 3, 9], 3)]) == 3
    assert shared_prefix([p([1, 2, 3, 4], 2), p([1, 2, 3, 9], 3)]) == 2
    assert shared_prefix([p([1, 2, 3], 1), p([5, 2, 3], 1)]) == 0


def test_decimals_for_resolves_the_median_activation():
    assert decimals_for(torch.tensor([0.0, 0.0])) == 4
    for median in (0.003, 0.2, 7.0, 900.0):
        values = torch.tensor([0.0, median / 2, median, median * 2])
        d = decimals_for(values)
        assert 10.0**-d <= median / 500 < 10.0 ** -(d - 1) or d in (0, 9)


def test_persona_test_is_the_one_way_anova_on_log_prompt_means():
    from scipy import stats

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 5)
    m = rng.gamma(5, 0.2, (3, 20))
    m[1, groups == 2] *= 4  # one persona's five prompts stand out
    design = permutation_design(groups, 4, 199, seed=1)
    f_stat, p = persona_test(m, groups, design, log_floor=0.05)
    for f in range(3):
        y = np.log(m[f] + 0.05 * m[f].mean())
        want = stats.f_oneway(*(y[groups == g] for g in range(4)))
        assert f_stat[f] == pytest.approx(want.statistic, rel=1e-4)
    assert p[1] < 0.01 and p[0] > 0.01 and p[2] > 0.01
    assert persona_test(np.ones((1, 20)), groups, design, 0.05)[1][0] == 1.0


def test_contrast_finds_the_smallest_set_that_stands_apart():
    mu = np.array([[4.0, 1.0, 1.0, 1.0], [4.0, 3.9, 1.0, 1.0], [4.0, 1.0, 1.0, 1.0]])
    lo = np.array([[3.0, 0.8, 0.8, 0.8], [3.0, 3.0, 0.8, 0.8], [0.5, 0.8, 0.8, 0.8]])
    hi = np.array([[5.0, 1.2, 1.2, 1.2], [5.0, 5.0, 1.2, 1.2], [9.0, 1.2, 1.2, 1.2]])
    c = contrast(mu, lo, hi, ratio=2.0, max_size=2)
    assert list(c.set_size) == [1, 2, 0]  # the third: one weak wording does not stand apart
    assert c.top_ratio[0] == 4.0 and c.top_margin[0] == pytest.approx(3.0 / 1.2)
    assert c.set_margin[1] == pytest.approx(3.0 / 1.2) and c.top_margin[2] < 1


def test_equivalence_bound_and_power():
    groups = np.repeat(np.arange(6), 5)
    rng = np.random.default_rng(0)
    log_m = rng.normal(0, 0.05, (2, 30))
    log_m[1, groups == 0] += np.log(1.6)
    mu = np.exp(log_m) @ (np.eye(6)[groups] / 5)
    high, power = equivalence(mu, log_m, groups, None, bound=1.5, confidence=0.95)
    assert high[0] < 1.5 < high[1] and power[0] > 0.9
    noisy = rng.normal(0, 0.5, (1, 30))
    _, weak = equivalence(np.exp(noisy) @ (np.eye(6)[groups] / 5), noisy, groups, None, 1.5, 0.95)
    assert weak[0] < 0.2  # too few, too noisy prompts: an equal feature rarely passes


def test_every_command_config_documents_every_field():
    """Each field's docstring is its --help text: a field the parser cannot read (a definition
    spread over lines, say) would show a bare flag."""
    import dataclasses

    from shoggoth import cli
    from shoggoth.core.config import field_help

    # load every command, so that every config class is loaded too
    assert all(cli.cli.get_command(None, name) for name in cli.cli.list_commands(None))
    configs = {c for c in _subclasses(Config) if c.__module__.startswith("shoggoth.")}
    assert {"HarvestConfig", "GenerateConfig", "GridConfig", "ExportConfig"} <= {
        c.__name__ for c in configs
    }
    missing = [
        f"{c.__name__}.{f.name}"
        for c in configs
        for f in dataclasses.fields(c)
        if not field_help(c, f.name)
    ]
    assert missing == []


def _subclasses(cls: type) -> set[type]:
    return {s for c in cls.__subclasses__() for s in {c} | _subclasses(c)}


def test_a_repeatable_option_is_a_list_from_flags_and_from_yaml(tmp_path):
    @dataclass
    class Many(Config):
        """A test config."""

        sae: list[Path] = option([], required="give one", repeat=True)
        """SAE directories."""

    with pytest.raises(BadInput, match="--sae: required"):
        Many()
    assert load_config(Many, None, {"sae": [Path("a"), Path("b")]}).sae == [Path("a"), Path("b")]
    (tmp_path / "c.yaml").write_text("sae: [x, y]\n")
    assert load_config(Many, tmp_path / "c.yaml", {}).sae == [Path("x"), Path("y")]
    assert HarvestConfig(db=Path("d"), sae_dir=Path("s")).sae_dir == [Path("s")]


def bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases expand to width**levels values."""
    parts = [f"&l0 [{', '.join(['x'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(parts)}]"


@pytest.mark.parametrize(
    "text, message",
    [
        (f"files: {bomb()}", "line 1: refused, holds more than 1,000,000 values"),
        (f"colour: {bomb()}", "line 1: refused, holds more than 1,000,000 values"),
        (f"files: {bomb(40, 2)}", "line 1: refused, holds more than 1,000,000 values"),
        ("files: &f [*f]", "line 1: refused, an alias inside the value it names"),
        ("files: " + "[" * 5000 + "]" * 5000, "line 1: refused, nested more than 64 levels deep"),
        ("n: " + "1" * 5000, "holds a value that cannot be used (Exceeds the limit"),
        ("name: 2001-13-45", "holds a value that cannot be used (month must be in 1..12)"),
    ],
)
def test_yaml_bombs_and_unbuildable_values_are_refused_as_read(tmp_path, text, message):
    path = yaml_file(tmp_path, text)
    with pytest.raises(BadInput) as e:
        read_config_file(Example, path)
    assert str(e.value).startswith(f"--config {path}") and message in str(e.value)
    assert len(str(e.value)) < 500 and "\n" not in str(e.value)


def test_a_config_file_is_read_no_further_than_its_bound(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(64 << 30)  # sparse: reading it whole was a MemoryError
    with pytest.raises(BadInput, match=r": larger than 4 MiB; refused$"):
        read_config_file(Example, path)
    with pytest.raises(BadInput, match=r"^--config /proc/self/mem: Input/output error$"):
        read_config_file(Example, Path("/proc/self/mem"))
    with pytest.raises(BadInput, match=r"^--config a\x00b: not a usable file name"):
        read_config_file(Example, Path("a\0b"))


@pytest.mark.parametrize(
    "text, start",
    [
        (
            "name: [" + ", ".join(["abcdefgh"] * 100_000) + "]",
            "option 'name': expected a string, got",
        ),
        ("files: " + "y" * 100_000, "option 'files': expected a list, got 'yyy"),
        ("flag: " + "z" * 100_000, "option 'flag': expected true or false, got 'zzz"),
        ("n: " + "9" * 4000, "--n 9999"),
        ("? " + "k" * 100_000 + "\n: 1", "unknown option 'kkk"),
        ('db: "a\\0b"', "option 'db': Invalid value: 'a\\x00b': not a usable path"),
    ],
)
def test_a_message_never_quotes_a_value_whole(tmp_path, text, start):
    path = yaml_file(tmp_path, text)
    with pytest.raises(BadInput) as e:
        load_config(Example, path, {"db": Path("x")})
    # (a bound is checked when the config is built, after the file: its line names the option)
    assert str(e.value).startswith((f"--config {path}: {start}", start))
    assert len(str(e.value)) < 500 and "\n" not in str(e.value)


def test_shown_and_clip_cut_what_a_message_quotes():
    nested: list = ["x"] * 9
    for _ in range(9):
        nested = [nested] * 9
    assert shown("abc") == "'abc'" and shown(1.5) == "1.5" and shown([1]) == "[1]"
    assert len(shown(nested)) == 80 and shown(nested).endswith("…")
    assert len(shown("x" * 10**6, limit=20)) == 20
    assert shown(10**5000) == "<a int too long to show>"
    assert clip("abcdef", 4) == "abc…" and clip("abc", 4) == "abc"
    assert len(str(BadInput("e" * 10**6))) == 1000


@pytest.mark.parametrize(
    "size, expected",
    [
        ("300MB", 300_000_000),
        ("2GiB", 2 << 30),
        ("1.5 GB", 1_500_000_000),
        ("0.5kib", 512),
        ("1000TB", 10**15),
    ],
)
def test_size_bytes_counts_exactly(size, expected):
    assert size_bytes(size) == expected


@pytest.mark.parametrize(
    "size, message",
    [
        ("99999999TB", "--memory-limit 99999999TB: more than 1PB"),
        ("1001TB", "--memory-limit 1001TB: more than 1PB"),
        ("9" * 30 + "GB", "expected a size such as 2GB"),
        ("9" * 5000 + "GB", "expected a size such as 2GB"),
        ("lots", "--memory-limit lots: expected a size such as 2GB"),
    ],
)
def test_a_memory_limit_past_any_machine_is_refused(size, message):
    with pytest.raises(BadInput) as e:
        SqlConfig(db=Path("d"), query=["SELECT 1"], memory_limit=size)
    assert message in str(e.value) and len(str(e.value)) < 200
