"""What the CLI prints for monitoring figures: counts as counts, metrics to four places, NaN as undefined."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines import display
from pipelines.metrics import period_metrics
from pipelines.stages.evaluate import EvaluateResult


def test_a_period_with_one_class_prints_auc_as_undefined_and_counts_as_whole_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display.out, "width", 160)  # one line per row, whatever the terminal
    one_class = {"N": 3, "HITS": 3, "LOSS": 1.2, "POS_0": 3, "RANKS_0": 6, "POS_1": 0, "RANKS_1": 0}
    mixed = {"N": 4, "HITS": 3, "LOSS": 2.0, "POS_0": 2, "RANKS_0": 7, "POS_1": 2, "RANKS_1": 3}
    rows = pd.DataFrame(
        [
            {"MODEL_VERSION": "1", "PERIOD": period, "METRIC": metric, "VALUE": value}
            for period, sums in [("2021", one_class), ("2022", mixed)]
            for metric, value in period_metrics(sums, 2).items()
        ]
    )
    display.show(EvaluateResult("ML.MONITORING", rows, []))
    printed = capsys.readouterr().out
    line_2021 = next(line for line in printed.splitlines() if "2021" in line)
    assert "undefined" in line_2021 and " 3 " in line_2021 and "3.0000" not in printed
    header = next(line for line in printed.splitlines() if "PERIOD" in line)
    assert "auc" in [cell.strip() for cell in header.split("┃")]  # the AUC column is kept, not dropped
    assert display.figure("rows", 31.0) == "31" and display.figure("log_loss", 0.5) == "0.5000"
