"""A served model as the gateway sees it: its task, its placement and version routing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployments.placements import Placement
from serving import dataplane
from serving.config import ModelSettings
from serving.errors import ModelNotReady, VersionNotFound
from serving.protocol.codec import TensorSpec
from serving.protocol.v2 import MetadataTensor, ModelMetadata
from serving.tasks import Task
from serving.tasks._domain import record_domain
from serving.traffic import choose_version


@dataclass
class Served:
    """One model: what it runs (``task``, ``placement``) and which versions answer."""

    settings: ModelSettings
    task: Task
    placement: Placement
    versions: list[str] = field(default_factory=list)
    traffic: dict[str, int] | None = None
    shadow: str | None = None
    unavailable: str | None = None  # why nothing is routed yet (the store could not be read)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def options(self) -> dict[str, Any]:
        return self.task.options(self.settings.options)

    @property
    def pinnable(self) -> list[str]:
        return list(dict.fromkeys([*self.versions, *(self.traffic or {})]))

    def version(self, requested: str | None, routing_key: str | None = None) -> str:
        """The pinned version, else the traffic split's pick, else the default."""
        if not self.versions:
            raise ModelNotReady(self.unavailable or f"model '{self.name}' is starting")
        if requested is None:
            if self.traffic:
                return choose_version(self.traffic, routing_key)
            return self.versions[0]
        dataplane.parse_version(requested)
        if requested not in self.pinnable:
            raise VersionNotFound(self.name, requested, self.pinnable)
        return requested

    def route(self, versions: list[str], traffic: dict[str, int] | None,
              shadow: str | None) -> None:
        """Ask the stages to load every routed version, then take the new routing (so
        traffic never reaches a version before it was asked to load)."""
        self.placement.preload(list(dict.fromkeys(
            [*versions, *(traffic or {}), *([shadow] if shadow else [])])))
        self.versions, self.traffic, self.shadow = versions, traffic, shadow
        self.unavailable = None

    async def ready(self) -> bool:
        """Routed, and the Model stage has loaded every version it serves."""
        return bool(self.versions) and await self.placement.ready()

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.name,
            versions=self.pinnable,
            inputs=[_tensor(self.task.input_spec, _columns(self.task))],
            outputs=[_tensor(s) for s in self.task.output_specs],
            parameters={"task": self.task.name, "default_version": self.versions[0]},
        )


def _tensor(spec: TensorSpec, parameters: dict[str, Any] | None = None) -> MetadataTensor:
    return MetadataTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape),
                          parameters=parameters)


def _columns(task: Task) -> dict[str, Any] | None:
    """What the raw input's columns (or elements) may hold, from the task's ``Record``
    (``raw_fields``): the domain every protocol's raw batch is checked against."""
    if not task.raw_fields:
        return None
    return record_domain(task.Record, task.raw_fields).describe()
