"""Where a rollout stands (the verdicts the decision returns) and the exit codes they end in."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_ROLLED_BACK = 1
EXIT_NOT_ROLLED_BACK = 2
EXIT_NOT_APPLIED = 3
EXIT_UNOBSERVABLE = 4


@dataclass(frozen=True)
class Done:
    """Rolled out: the new spec serves every application."""

    detail: str


@dataclass(frozen=True)
class Progress:
    """Still rolling out; ``detail`` says what is being waited for."""

    detail: str


@dataclass(frozen=True)
class _Reasoned:
    """A verdict with a ``reason``, which is its detail."""

    reason: str

    @property
    def detail(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Failed(_Reasoned):
    """The rollout cannot succeed without a change; ``reason`` says why."""


@dataclass(frozen=True)
class NotApplied(_Reasoned):
    """Serving settled, but KubeRay will not apply part of ``rayClusterConfig`` to the
    running RayCluster; ``reason`` names the fields, why, and what to do."""


@dataclass(frozen=True)
class Unobservable(_Reasoned):
    """The rollout cannot be watched: the API is unreachable, access is refused, or the
    RayService is missing."""


RolloutState = Done | Progress | Failed | NotApplied | Unobservable


def color(state: RolloutState) -> str:
    """The console color a verdict is printed in."""
    return {Done: "green", Progress: "yellow", NotApplied: "yellow"}.get(type(state), "red")
