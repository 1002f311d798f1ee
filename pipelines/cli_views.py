"""The `podium` commands that read rather than run a stage: `status`, `sql`, `app` and `dbt-sources`.

pipelines/cli.py registers them beside the stage commands; each docstring is its manual.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from pipelines import dbt_sources as sources_doc
from pipelines import display
from pipelines import query as query_stage
from pipelines import status as status_stage
from pipelines.app import launch
from pipelines.app.launch import DEFAULT_HOST, DEFAULT_PORT
from pipelines.cli_options import Format, HostOption, PortOption, ProfileOption, SpecOption, StorageOption
from pipelines.config import DEFAULT_PROFILE
from pipelines.config_files import load, load_profile
from pipelines.errors import PodiumError

err = Console(stderr=True)


def status(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    storage: StorageOption = "",
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table for people, json for machines (csv: not offered).")
    ] = Format.table,
) -> None:
    """Show where the spec stands: tables, studies, registered versions, the latest scores and monitoring.

    Changes nothing: the warehouse is opened read-only; what does not exist yet shows as missing.

    [bold]Examples[/]
      podium status
      podium status --format json | jq '.versions[] | select(.aliases | index("champion"))'
    """
    if format is Format.csv:
        raise PodiumError("status has no csv form: use --format table or --format json.")
    settings, experiment = load(profile, spec or None)
    result = status_stage.main(settings, experiment, storage or None)
    display.show_or_json(result, result.to_dict, format is Format.json)


def analysts_app(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    host: HostOption = DEFAULT_HOST,
    port: PortOption = DEFAULT_PORT,
) -> None:
    """Serve the analysts' app: predictions, model health, drift, shadow, backtest, promotions, cycles.

    Streamlit on loopback, reading the spec's warehouse tables read-only, one page at a time, so
    stages run beside it. Needs the `app` extra (pip install 'podium[app]'). Ctrl-C stops it.

    [bold]Examples[/]
      podium app
          then open http://127.0.0.1:8501
      podium app --spec examples/store_demand/store_demand.yaml --port 8502
    """
    load(profile, spec or None)  # a bad profile or spec: one error here, not a page of them in the browser
    err.print(f"podium app: http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    sys.exit(launch.run(profile, spec, host, port))


def sql(
    query: Annotated[str, typer.Argument(help="One query in Snowflake dialect.")],
    profile: ProfileOption = DEFAULT_PROFILE,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table for people, csv or json for machines.")
    ] = Format.table,
    write: Annotated[
        bool, typer.Option("--write", help="Allow DDL and DML, one statement (default: read-only).")
    ] = False,
) -> None:
    """Run one Snowflake-dialect query on the profile's warehouse and print the rows.

    Read-only by default: the statement must be a query (SELECT, WITH, UNION, VALUES, PIVOT,
    DESCRIBE, SHOW) with no write anywhere inside it, or it is refused before it runs; a DuckDB
    file is opened read-only, with no access to other files, databases or extensions, and takes
    no write lock. `--write` runs exactly one statement, DDL and DML included.

    [bold]Examples[/]
      podium sql "select count(*) from ML.F1_FEATURES"
      podium sql "select * from ML.F1_SCORES limit 5" --format csv
      podium sql "select * from ML.MODEL_PROMOTIONS" --format json | jq .
      podium sql --write "delete from ML.F1_SCORES where MODEL_VERSION = '1'"
          change data, on purpose
    """
    frame = query_stage.run(load_profile(profile), query, write)
    if frame is None:
        err.print("done: the statement ran (--write)", highlight=False)
        return
    if format is Format.csv:
        frame.to_csv(sys.stdout, index=False)
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        display.frame(frame)


def dbt_sources(
    profile: ProfileOption = DEFAULT_PROFILE,
    spec: SpecOption = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write here (e.g. models/podium_sources.yml); default stdout."),
    ] = None,
) -> None:
    """Write the spec's output tables as dbt sources: described columns, dbt tests, an `ml` exposure.

    Scores, monitoring and promotions (backtest and cycles when the spec has them), with keys and
    MODEL_VERSION not null and unique together, and PREDICTED_CLASS among the spec's classes.
    `dbt test --select source:podium_*` then checks Podium's tables like any other.

    [bold]Examples[/]
      podium dbt-sources --spec examples/dbt_store_demand/store_demand_dbt.yaml \\
          --out examples/dbt_store_demand/models/podium/sources.yml
      podium dbt-sources > models/podium_sources.yml
    """
    _, experiment = load(profile, spec or None)
    text = "# Written by `podium dbt-sources`: rerun it rather than edit.\n" + yaml.safe_dump(
        sources_doc.document(experiment), sort_keys=False, width=100
    )
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(text)
    os.replace(partial, out)  # a reader sees the old file or the new one, never half of one
    err.print(f"wrote {out}", highlight=False)
