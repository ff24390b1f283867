"""FinServe's environment variables, parsed in one place: ``Environment.read()``.

The CLI and the Serve application (``deployments.app``) read them through this model only,
so a value means the same to both (``FINSERVE_REQUIRE_AUTH=0`` is off everywhere).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import AppArgs

#: environment variable of each field
ENV = {
    "require_auth": "FINSERVE_REQUIRE_AUTH",
    "api_keys_file": "FINSERVE_API_KEYS_FILE",
    "home": "FINSERVE_HOME",
    "store": "FINSERVE_STORE",
}


class Environment(BaseModel):
    """What the environment sets; None where it sets nothing (empty counts as unset)."""

    model_config = ConfigDict(frozen=True)

    require_auth: bool | None = Field(
        None, description="Overrides security.require_auth: true/false, 1/0, yes/no, on/off.")
    api_keys_file: str | None = Field(None, description="Overrides security.api_keys_file.")
    home: str | None = Field(None, description="Where relative store and trail paths start "
                             "(default: the working directory).")
    store: str | None = Field(None, description="The CLI's default model store.")

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """Parse ``environ`` (default: ``os.environ``); a bad value is a ``ValueError``
        that names its variable."""
        environ = os.environ if environ is None else environ
        given = {field: environ[var].strip() for field, var in ENV.items()
                 if environ.get(var, "").strip()}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            first = exc.errors()[0]
            var = ENV[str(first["loc"][0])]
            raise ValueError(f"${var}={given[str(first['loc'][0])]!r}: {first['msg']}") from None

    @property
    def default_store(self) -> str:
        return self.store or "model_store"

    def resolve_path(self, uri: str) -> str:
        """Absolute path or URI: relative paths start at ``home``, else the cwd."""
        if "://" in uri or os.path.isabs(uri):
            return uri
        return str(Path(self.home or os.getcwd(), uri).resolve())

    def apply(self, args: AppArgs) -> AppArgs:
        """``args`` as served: local paths absolute, the security overrides applied."""
        args = args.model_copy(deep=True,
                               update={"store_uri": self.resolve_path(args.store_uri)})
        audit = args.audit
        for name in ("location", "checkpoint_location", "keys_dir"):
            value = getattr(audit, name)
            if value and value != "stdout" and not value.startswith("env:"):
                setattr(audit, name, self.resolve_path(value))
        if self.require_auth is not None:
            args.security.require_auth = self.require_auth
        if self.api_keys_file is not None:
            args.security.api_keys_file = self.api_keys_file
        return args
