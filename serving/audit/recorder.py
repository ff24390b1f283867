"""What the gateway records: one decision per answer (durable before the answer goes out)
and the shadow version's answer beside it, personal values tokenized."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.audit.keys import (
    TOKEN_KEY_FILE,
    TRAIL_KEY_FILE,
    Tokenizer,
    TrailKeyError,
    TrailKeys,
    load_key,
    write_public_key,
)
from serving.audit.records import decision_record, recorded, recorded_outputs
from serving.audit.sinks import (
    CHECKPOINTS,
    is_local,
    is_postgres,
    make_sink,
    resolve_location,
)
from serving.audit.trail import Trail, TrailUnavailable
from serving.config import Audit
from serving.store import utc_now

if TYPE_CHECKING:
    from serving.security import ApiKey
    from serving.tasks import Task

log = logging.getLogger("finserve.audit")


def checkpoint_location(settings: Audit) -> str:
    """Where a trail's checkpoints go: as configured, else beside it but apart (a sibling
    folder or URI; the checkpoint table of the same database)."""
    if settings.checkpoint_location:
        return resolve_location(str(settings.checkpoint_location))
    location = resolve_location(str(settings.location))
    if location == "stdout" or is_postgres(location):
        return location
    return location.rstrip("/") + "-checkpoints"


def _migrate_token_key(location: str, keys_dir: str | None) -> None:
    """Keep tokens stable across the move of the key out of the trail: a local trail's old
    ``.token-key`` becomes the key folder's token key."""
    old = Path(location.removeprefix("file://")) / ".token-key"
    if keys_dir and is_local(location) and old.exists():
        new = Path(keys_dir) / TOKEN_KEY_FILE
        if not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.link(old, new)
            log.warning("moved the tokenizing key out of the trail: %s -> %s", old, new)


class Recorder:
    """Decision records (chained, durable, before the answer) and shadow comparisons."""

    def __init__(self, settings: Audit, alone: Callable[[], bool] | None = None) -> None:
        """``alone``: whether the writer's process has a single request in flight (its
        record is then written without a thread hop, ``Trail.alone``)."""
        self.location = resolve_location(str(settings.location))
        keys_dir = settings.keys_dir
        _migrate_token_key(self.location, keys_dir)
        try:
            keys = TrailKeys.from_secret(load_key(settings.trail_key_env, keys_dir,
                                                  TRAIL_KEY_FILE))
            self.tokenizer = Tokenizer(load_key(settings.token_key_env, keys_dir,
                                                TOKEN_KEY_FILE))
        except TrailKeyError as exc:
            raise ValueError(f"decision trail: {exc}") from None
        write_public_key(keys_dir, keys)
        chain = uuid.uuid4().hex[:12]
        rotate = settings.rotate_mb << 20
        self.trail = Trail(
            make_sink(self.location, chain, rotate, compress=settings.compress), keys, chain,
            checkpoints=make_sink(checkpoint_location(settings), chain, rotate, CHECKPOINTS,
                                  settings.compress),
            checkpoint_interval_s=settings.checkpoint_interval_s, alone=alone,
        )
        log.info("decision trail at %s, chain %s, public key %s", self.location, chain,
                 keys.public_hex)

    def inputs(self, task: Task, raw: np.ndarray) -> dict[str, Any]:
        """The raw batch as recorded: personal values become keyed-hash tokens (the whole
        input when the task names it, else the named columns)."""
        spec = task.input_spec
        values = recorded(raw)
        personal = tuple(task.personal_fields)
        if spec.name in personal:
            return {"name": spec.name, "data": [self.tokenizer.token(v) for v in values],
                    "tokenized": [spec.name]}
        columns = [i for i, c in enumerate(task.raw_fields) if c in personal]
        for row in values if columns else ():
            for i in columns:
                row[i] = self.tokenizer.token(row[i])
        tokenized = [task.raw_fields[i] for i in columns]
        return {"name": spec.name, "data": values, "tokenized": tokenized}

    async def decision(self, *, request_id: str, key: ApiKey | None, model: str, task: Task,
                       version: str, artifact_sha256: str, route: str, raw: np.ndarray,
                       parameters: dict[str, Any], outputs: dict[str, np.ndarray],
                       latency_ms: float) -> dict[str, Any]:
        """Append the decision record of one answer; durable when this returns."""
        try:
            record = decision_record(
                request_id=request_id, key_id=key.id if key else None, model=model,
                version=version, artifact_sha256=artifact_sha256,
                route=route, inputs=self.inputs(task, raw),
                outputs=recorded_outputs(outputs, task.derived_outputs),
                latency_ms=latency_ms, parameters=parameters,
            )
        except (ValueError, TypeError) as exc:  # a value the record format cannot hold
            raise TrailUnavailable(f"decision trail unavailable: {exc}") from exc
        return await self.trail.append(record)

    async def shadow(self, request_id: str, model: str, task: Task, champion: str,
                     challenger: str, raw: np.ndarray, live: dict[str, np.ndarray],
                     shadow: dict[str, np.ndarray]) -> None:
        """Record the pair of answers for ``finserve compare``, in the trail itself."""
        from serving.dataplane import rows

        record = {
            "kind": "shadow", "request_id": request_id, "time": utc_now(),
            "model": model, "task": task.name, "champion": champion,
            "challenger": challenger, "inputs": self.inputs(task, raw),
            "champion_outputs": rows(live, recorded),
            "challenger_outputs": rows(shadow, recorded),
        }
        try:
            await self.trail.append(record)
        except TrailUnavailable as exc:  # the answer went out long ago; say so and go on
            log.warning("shadow answer of request %s not recorded: %s", request_id, exc)
