"""The Streamlit script of `podium app`, for the profile and spec PODIUM_PROFILE and PODIUM_SPEC name.

Every rerun opens the warehouse read-only, draws the chosen page and closes it again, so no connection
outlives a rerun and a stage can write between two of them. A DuckDB file that a stage is writing shows
a note, and the next rerun draws the page. Streamlit in Snowflake calls `render` with its active session
(docs/app.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import mlflow
import streamlit as st

from pipelines import registry, tracking
from pipelines.app.pages import PAGES, Link, Tags, View, by_slug
from pipelines.config import DEFAULT_PROFILE, Spec
from pipelines.config_files import load
from pipelines.errors import PodiumError, WarehouseBusy
from pipelines.secrets import hide_password
from pipelines.warehouse import Warehouse, connect

BUSY_WAIT = 1.0  # seconds a rerun waits for a stage's DuckDB write to end before it says so
BUSY = (
    "The warehouse is busy: a stage is writing to it (DuckDB lets no other process open the file "
    "meanwhile). Rerun the page (R) once the stage is done."
)
Opener = Callable[[], AbstractContextManager[Warehouse]]


def main() -> None:
    """The app for the profile and spec that PODIUM_PROFILE and PODIUM_SPEC name (the CLI's defaults)."""
    st.set_page_config(page_title="Podium", layout="wide")
    try:
        profile, spec = load(
            os.environ.get("PODIUM_PROFILE") or DEFAULT_PROFILE, os.environ.get("PODIUM_SPEC") or None
        )
    except PodiumError as exc:
        st.error(hide_password(str(exc)))
        return
    tracking.configure(profile)
    render(
        spec,
        lambda: connect(profile, read_only=True, wait=BUSY_WAIT),
        registry_tags(spec),
        registry_link(spec),
    )


def render(spec: Spec, open_warehouse: Opener, tags: Tags, link: Link) -> None:
    """Draw the page `?page=` names (chosen in the sidebar) from a warehouse opened for this rerun only."""
    slugs = [p.slug for p in PAGES]
    chosen = by_slug(st.query_params.get("page"))
    slug = st.sidebar.radio(
        spec.name, slugs, index=slugs.index(chosen.slug), format_func=lambda s: by_slug(s).title, key="page"
    )
    st.query_params["page"] = slug
    page = by_slug(slug)
    st.title(page.title)
    try:
        with open_warehouse() as warehouse:
            page.render(View(spec, warehouse, tags, link))
    except WarehouseBusy:
        st.warning(BUSY)
    except PodiumError as exc:
        st.error(hide_password(str(exc)))


def registry_tags(spec: Spec) -> Tags:
    """A version's tags from the MLflow registry, or None when the registry cannot be read."""

    def tags(version: str) -> dict[str, str] | None:
        try:
            return dict(registry.client().get_model_version(spec.model_name, version).tags)
        except tracking.STORE_ERRORS:
            return None

    return tags


def registry_link(spec: Spec) -> Link:
    """A version's page in the MLflow UI, when the tracking store is a server (else `make ui` serves it)."""

    def link(version: str) -> str | None:
        uri = mlflow.get_tracking_uri()
        if not uri.startswith(("http://", "https://")):
            return None
        return f"{hide_password(uri).rstrip('/')}/#/models/{spec.model_name}/versions/{version}"

    return link


if __name__ == "__main__":
    main()
