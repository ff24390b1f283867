"""Kubernetes API reads of one RayService and what a rollout judges it by (its events, the
starting cluster's pods, the running RayCluster), with API errors sorted into transient and
not. The kubernetes client is imported lazily."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from rollout.kuberay import CLUSTER_LABEL


class KubeAccessError(RuntimeError):
    """No kubeconfig or in-cluster credentials."""


class KubeApiError(RuntimeError):
    """A Kubernetes API call failed; ``transient`` says whether retrying can help."""

    transient = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiUnavailable(KubeApiError):
    """The API server did not answer or answered 5xx/429/408: retry with backoff."""

    transient = True


class ApiDenied(KubeApiError):
    """401/403 or a TLS failure: the credentials or the cluster address need a change."""


def _api_detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    text = message or getattr(exc, "reason", None) or str(exc)
    return str(text).splitlines()[0][:300]


def classify_api_error(exc: BaseException, what: str) -> KubeApiError | None:
    """A kubernetes-client or urllib3 error as a :class:`KubeApiError`, or None when it is
    neither (a bug: let it raise). The client raises ``ApiException`` with the HTTP status
    (status 0 for a TLS error) and lets urllib3's connection errors through."""
    import urllib3

    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(exc, urllib3.exceptions.HTTPError):
        detail = _api_detail(exc)
        if status in (401, 403) or (status == 0 and "ssl" in detail.lower()):
            return ApiDenied(f"{what}: {status or 'TLS'} {detail}", status)
        if status >= 500 or status in (0, 408, 429):
            return ApiUnavailable(f"{what}: {status} {detail}", status)
        return KubeApiError(f"{what}: {status} {detail}", status)
    if isinstance(getattr(exc, "reason", None), urllib3.exceptions.SSLError):
        return ApiDenied(f"{what}: TLS {getattr(exc, 'reason', exc)}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0]
        # urllib3 prefixes the connection object: "<...HTTPSConnection object at 0x..>: "
        return ApiUnavailable(f"{what}: {re.sub(r'^(<[^>]*>|None): ', '', reason)[:300]}")
    return None


class RayServiceWatcher(Protocol):
    """Reads one RayService and what a rollout judges it by. Methods raise
    :class:`KubeApiError`."""

    name: str

    def get(self) -> dict[str, Any] | None:
        """The RayService object, or None if it does not exist."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """Events whose involvedObject is the RayService, as the core/v1 API returns them."""
        ...

    def pods(self, cluster: str) -> list[dict[str, Any]]:
        """The pods labelled ``ray.io/cluster=<cluster>``, as the API returns them."""
        ...

    def raycluster(self, name: str) -> dict[str, Any] | None:
        """The RayCluster ``name``, or None if it does not exist."""
        ...

    def server_now(self) -> datetime | None:
        """The API server's time at the last answer (its Date header), if known."""
        ...


REQUEST_TIMEOUT = (5.0, 20.0)  # connect, read: a hung API server must not hang the rollout


class KubeRayServiceWatcher:
    """RayServiceWatcher over the kubernetes Python client (kubeconfig or in-cluster)."""

    def __init__(self, name: str, namespace: str | None = None,
                 kube_context: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=kube_context)
            contexts, current = config.list_kube_config_contexts()
            if kube_context:
                current = next(c for c in contexts if c["name"] == kube_context)
            namespace = namespace or current["context"].get("namespace", "default")
        except config.ConfigException as exc:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise KubeAccessError(
                    f"cannot reach Kubernetes: {exc}. Set KUBECONFIG or --kube-context") from exc
            namespace = namespace or Path(
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        self.name, self.namespace = name, namespace
        self._custom = client.CustomObjectsApi()
        self._core = client.CoreV1Api()
        self._date: str | None = None

    def _json(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call's JSON body, with a timeout and errors as KubeApiError."""
        try:
            response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                            **kwargs)
            self._date = response.headers.get("Date") or self._date
            return json.loads(response.data)
        except ValueError as exc:
            raise KubeApiError(f"{what}: the answer is not JSON ({exc})") from exc
        except Exception as exc:
            error = classify_api_error(exc, what)
            if error is None:
                raise
            raise error from exc

    def _custom_object(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(f"get {plural} {self.namespace}/{name}",
                              self._custom.get_namespaced_custom_object, "ray.io", "v1",
                              self.namespace, plural, name)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def get(self) -> dict[str, Any] | None:
        return self._custom_object("rayservices", self.name)

    def raycluster(self, name: str) -> dict[str, Any] | None:
        return self._custom_object("rayclusters", name)

    def events(self) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind=RayService,involvedObject.name={self.name}"
        return self._json(f"list events in {self.namespace}", self._core.list_namespaced_event,
                          self.namespace, field_selector=selector)["items"]

    def pods(self, cluster: str) -> list[dict[str, Any]]:
        return self._json(f"list pods in {self.namespace}", self._core.list_namespaced_pod,
                          self.namespace, label_selector=f"{CLUSTER_LABEL}={cluster}")["items"]

    def server_now(self) -> datetime | None:
        try:
            return parsedate_to_datetime(self._date) if self._date else None
        except (TypeError, ValueError):
            return None
