"""The rehearsal of `podium cycle` on the bundled data, shared by its tests (pipeline and reliability).

The champion is trained on the seasons before 2018 and held out on 2018; scoring starts in 2019; the
policy retrains when the champion is three seasons old, and its other triggers are set not to fire.
"""

from __future__ import annotations

from datetime import date

from pipelines.config import CycleConfig, Profile, Spec
from pipelines.stages import promote, train

SEASONS = [date(2020, 1, 1), date(2021, 1, 1), date(2022, 1, 1)]
POLICY = {
    "table": "ML.F1_CYCLES",
    "retrain": {
        "when_any": {
            "drift": {"features": 50, "psi": 0.2},  # more features than the table has: never fires
            "live": {"metric": "log_loss", "worse_than_holdout_by": 5.0},  # never fires
            "age": {"periods": 3},
            "new_rows": 100_000,  # never fires
        },
        "tune": {"trials": 2},
    },
}


def rehearsal_spec(spec: Spec) -> Spec:
    """The tuned spec held out on 2018, scoring from 2019, with the policy above and no refresh."""
    scoring = spec.scoring_section.model_copy(update={"start": date(2019, 1, 1)})
    return spec.model_copy(
        update={
            "holdout_start": date(2018, 1, 1),
            "holdout_end": date(2019, 1, 1),
            "scoring": scoring,
            "ingest": None,
            "features": None,
            "cycle": CycleConfig.model_validate(POLICY),
        }
    )


def crown(profile: Profile, spec: Spec) -> str:
    """v1 trained before 2018 (the tuned studies' best logreg), champion and in Production."""
    rehearsed = rehearsal_spec(spec)
    version = str(train.main(profile, rehearsed, family="logreg").champion.version)
    promote.main(profile, rehearsed, version=version, stage="Production", force=True)
    return version
