"""The `podium` manual: its help and epilog, and the reflow that fits a docstring to the terminal."""

from __future__ import annotations

import inspect

HELP = """Podium: MLflow-tracked experiments and a model registry over Snowflake (a DuckDB file offline).

One command per stage, in pipeline order: [bold]ingest[/] raw files, build [bold]features[/] in SQL or dbt,
[bold]tune[/] one Optuna study per model family, [bold]train[/] and register the best, [bold]promote[/] it
through the spec's policy, [bold]score[/] rows back into the warehouse, [bold]evaluate[/] them against
actuals. [bold]run[/] chains them all, [bold]cycle[/] runs one period of them on a schedule (retraining
when the spec's policy says so), [bold]backtest[/] replays the cycles over past periods, [bold]status[/]
shows where everything stands, [bold]sql[/] queries the warehouse, [bold]app[/] serves its tables to
analysts in the browser and [bold]dbt-sources[/] describes them to dbt. Every stage is an MLflow run: see
them with `mlflow ui`.

A [italic]spec[/] (experiments/NAME/spec.yaml) says what is learned; a [italic]profile[/] (conf/NAME.yaml)
says where it runs. `podium COMMAND --help` explains one command, with examples.
"""

EPILOG = """[bold]Examples[/]
  podium run
      the whole pipeline on the local DuckDB file (what `make demo` does)
  podium status --format json
      tables, studies, versions, latest scores and monitoring, for machines
  podium tune --family xgboost --n-trials 50
      fifty more xgboost trials: the study resumes

[bold]Environment[/]
  PODIUM_PROFILE, PODIUM_SPEC
      defaults for --profile and --spec
  MLFLOW_TRACKING_URI
      the MLflow store; else the profile's tracking_uri, else the project's sqlite:///mlflow.db
  PODIUM_LOG_LEVEL
      INFO (default), DEBUG or WARNING
  PODIUM_ACTOR
      who promotes, recorded in the audit table (default: the OS user)
  SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, ...
      Snowflake credentials, when the profile names no connection_name

[bold]Files[/]
  conf/NAME.yaml, experiments/NAME/spec.yaml
      profiles and specs
  warehouse/podium.duckdb
      the embedded warehouse of profile local
  mlflow.db, mlruns/
      MLflow's default store: runs, artifacts, registered models
  optuna/studies.journal
      the Optuna studies (the profile's optuna_storage)

[bold]Exit status[/]
  0 on success; 1 for a problem with your input, printed as one line
  `error: ...` that names the fix; 2 for bad usage (an unknown option).
"""


def reflow(text: str) -> str:
    """Unwrap prose for the terminal's width: a line joins the line before it unless either is indented."""
    lines: list[str] = []
    for line in inspect.cleandoc(text).splitlines():
        if lines and lines[-1] and line and not line[0].isspace() and not lines[-1][0].isspace():
            lines[-1] += " " + line
        else:
            lines.append(line)
    return "\n".join(lines)
