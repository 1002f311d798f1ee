"""The feature table is a contract: every stage refuses a table no model can be trained on or score.

Variants of the built F1 table (one column nulled or retyped, in DuckDB SQL on a copy) are
refused with one clear error by the features check (keeping the old table), by tune and train
before any fit, and by score before anything is written. Shadow scoring reads the union of both
versions' inputs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Profile, Spec
from pipelines.errors import DataQualityError, PodiumError
from pipelines.registry import CHALLENGER, CHAMPION
from pipelines.stages import features, promote, score, train, tune
from pipelines.warehouse import connect
from tests.helpers import duckdb_profile, with_sql

KEPT = "ML.F1_FEATURES_AS_TRAINED"  # a copy of the table as the versions were trained on it


def replace_column(profile: Profile, spec: Spec, column: str, expression: str, source: str = "") -> None:
    """Rebuild the spec's table from `source` (default: itself) with `column` computed as `expression`."""
    with connect(profile) as warehouse:
        warehouse.execute(
            f"CREATE OR REPLACE TABLE {spec.table} AS SELECT * REPLACE ({expression} AS {column}) "
            f"FROM {source or spec.table}"
        )


def keep_table(profile: Profile, spec: Spec) -> None:
    with connect(profile) as warehouse:
        warehouse.execute(f"CREATE OR REPLACE TABLE {KEPT} AS SELECT * FROM {spec.table}")


def nothing_ran(spec: Spec) -> bool:
    """No run in the spec's experiment and no registered model: no stage got as far as fitting."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return not runs and not client.search_registered_models()


def without(spec: Spec, columns: list[str]) -> Spec:
    """The spec with `columns` left out of the features (through columns.exclude)."""
    kept = [c for c in spec.columns.categorical if c not in columns]
    narrow = spec.columns.model_copy(
        update={"exclude": [*spec.columns.exclude, *columns], "categorical": kept}
    )
    return spec.model_copy(update={"columns": narrow})


@pytest.mark.parametrize(
    ("column", "kind"),
    [("CIRCUIT_REF", "VARCHAR"), ("QUALI_GAP_PCT", "DOUBLE")],
    ids=["categorical", "numeric"],
)
def test_an_all_null_feature_column_is_refused_before_any_fit(
    column: str, kind: str, trained_profile: Profile, tuned: tuple[Profile, Spec], tmp_path: Path
) -> None:
    _, spec = tuned
    replace_column(trained_profile, spec, column, f"NULL::{kind}")
    message = (
        rf"^ML.F1_FEATURES breaks the feature contract: columns \['{column}'\] have no non-null value in the "
        r"training window \(RACE_DATE in \[2010-01-01, 2021-01-01\)\): drop them via columns.exclude, or fix "
        r"the feature SQL\.$"
    )
    fresh = trained_profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")})
    with pytest.raises(DataQualityError, match=message):
        tune.main(fresh, spec, n_trials=1)
    with pytest.raises(DataQualityError, match=message):
        train.main(trained_profile, spec)
    assert nothing_ran(spec), "refused before any trial, fit or registration"
    assert not (tmp_path / "studies.journal").exists() or not (tmp_path / "studies.journal").stat().st_size
    with connect(trained_profile, read_only=True) as warehouse:
        checks = {c.name: c for c in features.check_quality(warehouse, spec)}
    assert not checks["feature_contract"].passed and f"['{column}']" in checks["feature_contract"].detail


def test_features_refuse_a_categorical_built_as_a_number_and_keep_the_old_table(
    built_profile: Profile, spec: Spec, tmp_path: Path
) -> None:
    profile = duckdb_profile(tmp_path / "warehouse.duckdb")
    shutil.copyfile(built_profile.warehouse.path, profile.warehouse.path)
    numbered = with_sql(spec, "    ra.CIRCUIT_REF\n", "    LENGTH(ra.CIRCUIT_REF) AS CIRCUIT_REF\n", tmp_path)
    with pytest.raises(
        DataQualityError,
        match=r"ML.F1_FEATURES failed data-quality checks: feature_contract: categorical columns "
        r"\[CIRCUIT_REF BIGINT\] are not text: cast them to VARCHAR in the feature SQL, "
        r".*Nothing was published",
    ):
        features.main(profile, numbered)
    with connect(profile, read_only=True) as warehouse:
        assert warehouse.columns(spec.table)["CIRCUIT_REF"] == "VARCHAR", "the old table is kept"
        rows = warehouse.query(f"SELECT COUNT(*) AS N FROM {spec.table}").N[0]
    assert rows == 5517
    replace_column(profile, spec, "CIRCUIT_REF", "LENGTH(CIRCUIT_REF)")  # the same table, made by hand
    fresh = profile.model_copy(update={"optuna_storage": str(tmp_path / "studies.journal")})
    with pytest.raises(DataQualityError, match=r"categorical columns \[CIRCUIT_REF BIGINT\] are not text"):
        tune.main(fresh, spec, n_trials=1)


BREACHES = {  # a variant of the table the version was trained on -> what is refused
    "categorical retyped to INTEGER": (
        "CIRCUIT_REF",
        "LENGTH(CIRCUIT_REF)::INTEGER",
        r"categorical columns \[CIRCUIT_REF INTEGER\] are not text: cast them to VARCHAR",
    ),
    "categorical all NULL": (
        "CIRCUIT_REF",
        "NULL::VARCHAR",
        r"columns \['CIRCUIT_REF'\] have no non-null value in the training window",
    ),
    "numeric now text": ("GRID", "GRID::VARCHAR", r"numeric columns \[GRID VARCHAR\] are not numbers"),
    "numeric all NULL": (
        "QUALI_GAP_PCT",
        "NULL::DOUBLE",
        r"columns \['QUALI_GAP_PCT'\] have no non-null value",
    ),
}


def test_score_refuses_a_table_that_no_longer_fits_the_version_and_writes_nothing(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    profile = trained_profile
    train.main(profile, spec, family="decision_tree")
    promote.main(profile, spec, version="1", force=True)
    keep_table(profile, spec)
    for case, (column, expression, breach) in BREACHES.items():
        replace_column(profile, spec, column, expression, source=KEPT)
        with pytest.raises(DataQualityError) as refused:
            score.main(profile, spec)
        message = str(refused.value)
        assert message.startswith("ML.F1_FEATURES no longer fits the inputs f1_podium v1 was trained on: "), (
            case
        )
        assert re.search(breach, message) and "score with a model trained on this table" in message, case
        assert "\n" not in message
        with connect(profile, read_only=True) as warehouse:
            assert not warehouse.exists(spec.scoring_table), f"{case}: refused before anything was written"


def test_shadow_reads_both_versions_inputs_and_refuses_a_challenger_input_the_table_lacks(
    trained_profile: Profile, tuned: tuple[Profile, Spec]
) -> None:
    _, spec = tuned
    profile = trained_profile
    narrow = without(spec, ["CIRCUIT_REF", "DRIVER_AGE"])
    champion = train.main(profile, narrow, family="decision_tree").trained[0].version
    challenger = train.main(profile, spec, family="decision_tree").trained[0].version
    promote.main(profile, spec, version=champion, force=True)
    MlflowClient().set_registered_model_alias(spec.model_name, CHALLENGER, challenger)
    keep_table(profile, spec)
    with connect(profile) as warehouse:
        warehouse.execute(f"ALTER TABLE {spec.table} DROP COLUMN DRIVER_AGE")
    with pytest.raises(PodiumError) as refused:
        score.main(profile, spec, shadow=True)
    assert re.search(
        rf"^ML.F1_FEATURES lacks columns \['DRIVER_AGE'\] that f1_podium v{challenger}'s signature needs "
        r"\(the challenger, scored beside the champion by --shadow\): rebuild the features "
        r".*without --shadow",
        str(refused.value),
    ), refused.value
    with connect(profile) as warehouse:
        assert not warehouse.exists(spec.scoring_table), "refused before anything was written"
        warehouse.execute(f"CREATE OR REPLACE TABLE {spec.table} AS SELECT * FROM {KEPT}")

    result = score.main(profile, spec, shadow=True)
    assert result.shadow is not None and result.shadow.version == challenger
    with connect(profile, read_only=True) as warehouse:
        rows = warehouse.query(f"SELECT * FROM {spec.scoring_table}")
        expected = warehouse.query(
            f"SELECT COUNT(*) AS N FROM {spec.table} WHERE {spec.time} >= ?", [spec.scoring.start]
        ).N[0]
    assert rows.groupby("MODEL_VERSION").size().to_dict() == {champion: expected, challenger: expected}
    assert rows.groupby("MODEL_VERSION").MODEL_ALIAS.first().to_dict() == {
        champion: CHAMPION,
        challenger: CHALLENGER,
    }
    keys = [
        sorted(map(tuple, rows[rows.MODEL_VERSION == v][spec.keys].to_numpy()))
        for v in (champion, challenger)
    ]
    assert keys[0] == keys[1], "both versions scored the same rows"
