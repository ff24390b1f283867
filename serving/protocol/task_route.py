"""The task routes (``POST /v1/{model}/{route}``): a request of named-field records and
per-request parameters, and the answer, one result per record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from serving.protocol.codec import check_count

if TYPE_CHECKING:
    from serving.tasks import Task


class TaskAnswer(BaseModel):
    """Task route answer: which model and version answered, one result per record."""

    model: str
    version: str
    request_id: str
    results: list[dict[str, Any]]
    summary: dict[str, Any] | None = Field(None, description="About the whole request.")


def records_limit(max_instances: int) -> dict[str, Any]:
    """Validators for a task route's request model: its ``records`` are counted (413)
    before pydantic validates any record."""

    def count(cls: type[BaseModel], records: Any) -> Any:
        if isinstance(records, list):
            check_count(len(records), max_instances)  # not a ValueError: pydantic lets it out
        return records

    return {"count_records": field_validator("records", mode="before")(count)}


def task_request(task: Task, max_instances: int) -> type[BaseModel]:
    """The request model of ``task``'s route: ``records`` (one ``Record`` per example, at
    most ``max_instances``) and ``parameters`` (the task's ``Parameters``), validated as
    the body is parsed."""
    return create_model(
        f"{task.Record.__name__}Batch",
        __config__=ConfigDict(extra="forbid"),
        __validators__=records_limit(max_instances),
        records=(
            list[task.Record],  # type: ignore[name-defined]
            Field(min_length=1, max_length=max_instances,  # counted first: 413 over it
                  description=f"One {task.Record.__name__} per example, at most "
                  f"{max_instances} (413 over it)."),
        ),
        parameters=(
            task.Parameters | None if task.Parameters else None,  # type: ignore[operator]
            Field(None, description="Per-request parameters of this task."),
        ),
    )


def request_params(task: Task, body: BaseModel) -> dict[str, Any]:
    """A parsed task route body's parameters, defaults filled in; validated once, as the
    body was parsed (``task_request``)."""
    given = getattr(body, "parameters", None)
    return given.model_dump() if given is not None else task.request_params(None)
