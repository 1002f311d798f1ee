"""Podium's app in Streamlit in Snowflake: the same pages, drawn on the app's active Snowpark session.

Unproven: running it needs a Snowflake account, which this project's tests do not have. docs/app.md says
how to deploy it (the `pipelines` package and spec.yaml uploaded beside this file) and what differs from
`podium app`: the warehouse is the active session (never closed by a page), and the registry is not read
(the MLflow tracking store is outside Snowflake), so the champion's card shows the audit table's version.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import streamlit as st
from snowflake.snowpark.context import get_active_session

from pipelines.app.main import render
from pipelines.config_files import load_spec
from pipelines.warehouse.snowpark import SnowparkWarehouse


def main() -> None:
    """The app for the spec uploaded beside this file, on the session Streamlit in Snowflake gives it."""
    st.set_page_config(page_title="Podium", layout="wide")
    spec = load_spec(str(Path(__file__).with_name("spec.yaml")))
    warehouse = SnowparkWarehouse(get_active_session())
    render(spec, lambda: nullcontext(warehouse), tags=lambda version: None, link=lambda version: None)


if __name__ == "__main__":  # Streamlit runs the file as its main script
    main()
