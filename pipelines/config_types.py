"""The value types config is made of: strict models, and names checked as Snowflake identifiers."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from pipelines.errors import PodiumError
from pipelines.warehouse.dialect import check_identifier, check_table


def _identifier(value: str) -> str:
    try:
        return check_identifier(value)
    except PodiumError as exc:
        raise ValueError(str(exc)) from None


def _table(value: str) -> str:
    try:
        return check_table(value)
    except PodiumError as exc:
        raise ValueError(str(exc)) from None


def class_name(value: str) -> str:
    try:
        check_identifier(f"P_{value}")
    except PodiumError:
        raise ValueError(
            f"{value!r} cannot name its probability column P_{value}: use letters, digits and _ (e.g. "
            "very_high)"
        ) from None
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
TableName = Annotated[str, AfterValidator(_table)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, values are immutable."""

    # no NaN or infinity where a number is expected: every bound below then means what it says
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)
