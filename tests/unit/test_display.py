"""What the CLI prints for monitoring figures: counts as counts, metrics to four places, NaN as undefined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import display
from pipelines.evaluate import EvaluateResult
from pipelines.metrics import period_metrics


def test_a_period_with_one_class_prints_auc_as_undefined_and_counts_as_whole_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display.out, "width", 160)  # one line per row, whatever the terminal
    y = np.array([0, 0, 0])  # one class only: AUC is undefined
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    mixed = period_metrics(np.array([0, 1, 2, 1]), np.vstack([proba, [[0.1, 0.8, 0.1]]]))
    rows = pd.DataFrame(
        [
            {"MODEL_VERSION": "1", "PERIOD": period, "METRIC": metric, "VALUE": value}
            for period, figures in [("2021", period_metrics(y, proba)), ("2022", mixed)]
            for metric, value in figures.items()
        ]
    )
    display.show(EvaluateResult("ML.MONITORING", rows, []))
    printed = capsys.readouterr().out
    line_2021 = next(line for line in printed.splitlines() if "2021" in line)
    assert "undefined" in line_2021 and " 3 " in line_2021 and "3.0000" not in printed
    header = next(line for line in printed.splitlines() if "PERIOD" in line)
    assert "auc" in [cell.strip() for cell in header.split("┃")]  # the AUC column is kept, not dropped
    assert display.figure("rows", 31.0) == "31" and display.figure("log_loss", 0.5) == "0.5000"
