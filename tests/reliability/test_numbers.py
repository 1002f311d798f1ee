"""Every numeric option and spec field refuses NaN, infinity, negative and out-of-range values, in one line.

A number Podium takes bounds time, memory or work: NaN slips past `x > 0`, infinity past any minimum,
and `true` reads as 1. Each bad value must end the command before it starts, with one `error:` line
naming the option or field (exit 1), never a traceback. Text that is not a number at all is click's
usage error (exit 2), also without a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, error_lines, podium

NOT_A_NUMBER = ["nan", "inf", "-inf"]

OPTIONS: list[tuple[list[str], str, list[str]]] = [
    (["tune"], "--seconds", [*NOT_A_NUMBER, "-1", "0", "1", "1e9"]),
    (["tune"], "--n-trials", ["-1", "0", "10000000"]),
    (["tune"], "--n-jobs", ["-1", "5000"]),
    (["score"], "--chunk-rows", ["0", "-5", "99999999999999999999"]),
    (["backtest"], "--trials", ["0", "-1", "1000000"]),
]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [(c, o, v) for c, o, values in OPTIONS for v in values],
    ids=lambda x: x if isinstance(x, str) else " ".join(x),
)
def test_a_bad_number_for_an_option_is_one_error_line(
    command: list[str],
    option: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = podium([*command, option, value], capsys, monkeypatch)
    assert "Traceback" not in err
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err
    assert option in lines[0] and "must be a number from" in lines[0]


@pytest.mark.parametrize("value", ["nan", "1.5", "many"])
def test_text_that_is_no_integer_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = podium(["tune", "--n-trials", value], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and "--n-trials" in err


NAN, INF = math.nan, math.inf
SPEC_FIELDS: list[tuple[str, list[Any]]] = [
    ("tuning.budget.seconds", [NAN, INF, -1, 0, 2, 1e12]),
    ("tuning.budget.trials", [0, -1, 10**9, True, 2.5]),
    ("tuning.seed", [-1, 2**40, True]),
    ("cv.folds", [1, 1000, NAN, True]),
    ("cv.gap", [-1, 1000]),
    ("scoring.chunk_rows", [0, -1, 10**20, NAN]),
    ("promotion.min_improvement", [-0.1, 2, NAN, INF]),
    (
        "promotion.live",
        [{"periods": 1000}, {"periods": True}, {"periods": 0}, {"periods": 2, "min_improvement": NAN}],
    ),
    ("monitoring.psi_threshold", [0, -1, 100, NAN, INF]),
    ("monitoring.hit_rate.k", [0, -3, 10**6]),
    ("backtest.trials", [0, -1, True, 10**7]),
    ("features.expect_rows.min", [-1, NAN]),
]


def spec_with(tmp_path: Path, field: str, value: Any) -> Path:
    """The bundled spec with one field set to `value` (YAML writes NaN and infinity as .nan and .inf)."""
    spec = yaml.safe_load((REPO / "experiments" / "f1_podium" / "spec.yaml").read_text())
    *parents, last = field.split(".")
    node = spec
    for key in parents:
        node = node[key]
    node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in SPEC_FIELDS for v in values], ids=lambda x: str(x)
)
def test_a_bad_number_in_the_spec_is_one_error_line_naming_the_field(
    field: str,
    value: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = podium(["status", "--spec", str(spec_with(tmp_path, field, value))], capsys, monkeypatch)
    assert "Traceback" not in err
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err
    assert field.split(".")[-1] in lines[0] or field.rsplit(".", 1)[0] in lines[0], lines[0]


PROFILE_FIELDS: list[tuple[str, Any]] = [
    ("memory_limit", "1KB"),
    ("memory_limit", "0MB"),
]
SNOWFLAKE_FIELDS: list[tuple[str, Any]] = [
    ("login_timeout", 0),
    ("login_timeout", NAN),
    ("network_timeout", -5),
    ("statement_timeout", 10**9),
    ("statement_timeout", True),
]


@pytest.mark.parametrize(
    ("backend", "field", "value"),
    [("duckdb", f, v) for f, v in PROFILE_FIELDS] + [("snowflake", f, v) for f, v in SNOWFLAKE_FIELDS],
    ids=lambda x: str(x),
)
def test_a_bad_number_in_the_profile_is_one_error_line_naming_the_field(
    backend: str,
    field: str,
    value: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"warehouse": {"backend": backend, field: value}}))
    code, _, err = podium(["status", "--profile", str(profile)], capsys, monkeypatch)
    assert "Traceback" not in err
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and field in lines[0], err
