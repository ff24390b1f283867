"""FinServe platform core: protocols, model store, tasks, training and CLI.

This package never imports Ray at module level; the Ray Serve layer lives in
``deployments``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finserve")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
