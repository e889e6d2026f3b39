"""Engine workers discovered from Kubernetes pods.

The supervisor (only it: one watch per gateway, not one per process) lists the pods that match a
label selector, then watches them from the list's resourceVersion. A pod that is Running, Ready
and not being deleted is a worker at ``grpc://POD_IP:PORT``; one that loses readiness, is being
deleted or is deleted stops being one. Changes go through the supervisor's fleet path, the one
``POST``/``DELETE /workers`` take, so every gateway process sees them.

A watch the API server ends is resumed from the last resourceVersion seen; ``410 Gone`` (that
version is too old) means a new list, compared with what is known; any other failure means a new
list after a backoff.

The port: ``--discovery-port`` (a number, or the name of a container port), overridden per pod by
the annotation ``herdsman.io/port``. The role: a pod matching ``--prefill-selector`` or
``--decode-selector`` has that role, else the label ``herdsman.io/role`` (prefill, decode or
regular) gives it; a prefill's bootstrap port comes from ``herdsman.io/bootstrap-port`` (label or
annotation) when the engine does not state it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Any, Protocol

log = logging.getLogger(__name__)

ROLE_LABEL = "herdsman.io/role"
PORT_ANNOTATION = "herdsman.io/port"
BOOTSTRAP_PORT_KEY = "herdsman.io/bootstrap-port"

_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 30.0


def parse_selector(text: str | None) -> dict[str, str | None]:
    """``app=vllm,tier=gpu`` as {key: value}; a bare ``key`` means the label must exist (None).
    Only equality is understood client-side (the API server gets the selector as it is)."""
    selector: dict[str, str | None] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part or " in " in part or " notin " in part:
            raise ValueError(f"only key=value and key selectors are understood here: {part!r}")
        key, eq, value = part.partition("=")
        key = key.strip().rstrip("=")
        if not key:
            raise ValueError(f"bad label selector term {part!r}")
        selector[key] = value.strip().lstrip("=") if eq else None
    return selector


def _matches(labels: dict[str, str], selector: dict[str, str | None]) -> bool:
    if not selector:
        return False
    return all(
        key in labels and (value is None or labels[key] == value) for key, value in selector.items()
    )


@dataclasses.dataclass(slots=True)
class DiscoveryConfig:
    namespace: str = "default"
    selector: str = ""
    # A port number, or the name of a container port of the pod ("grpc").
    port: str = "50051"
    prefill_selector: str = ""
    decode_selector: str = ""
    kubeconfig: str | None = None
    # Seconds a watch call may last before the API server ends it (it is resumed at once).
    watch_timeout: int = 300


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    url: str
    role: str = "regular"
    bootstrap_port: int | None = None


def _int(value: object) -> int | None:
    try:
        port = int(str(value))
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _is_ready(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def _pod_port(pod: dict[str, Any], config: DiscoveryConfig) -> int | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    wanted = annotations.get(PORT_ANNOTATION) or config.port
    port = _int(wanted)
    if port is not None:
        return port
    for container in (pod.get("spec") or {}).get("containers") or ():
        for entry in container.get("ports") or ():
            if entry.get("name") == wanted:
                return _int(entry.get("containerPort"))
    return None


def pod_target(pod: dict[str, Any], config: DiscoveryConfig) -> Target | None:
    """The worker a pod is now (None: not ready, or its port unknown)."""
    if not _is_ready(pod):
        return None
    port = _pod_port(pod, config)
    if port is None:
        name = (pod.get("metadata") or {}).get("name")
        log.warning("pod %s: no port %r; not a worker", name, config.port)
        return None
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if _matches(labels, parse_selector(config.prefill_selector)):
        role = "prefill"
    elif _matches(labels, parse_selector(config.decode_selector)):
        role = "decode"
    else:
        role = labels.get(ROLE_LABEL, "regular")
        if role not in ("regular", "prefill", "decode"):
            log.warning("pod %s: unknown role %r; taken as regular", metadata.get("name"), role)
            role = "regular"
    bootstrap = None
    if role == "prefill":
        bootstrap = _int(annotations.get(BOOTSTRAP_PORT_KEY) or labels.get(BOOTSTRAP_PORT_KEY))
    ip = pod["status"]["podIP"]
    host = f"[{ip}]" if ":" in ip else ip
    return Target(f"grpc://{host}:{port}", role, bootstrap)


class FleetSink(Protocol):
    """Where discovered workers go (the supervisor's fleet path)."""

    async def discovered(self, url: str, role: str, bootstrap_port: int | None) -> None: ...

    async def lost(self, url: str) -> None: ...


class Gone(Exception):
    """The API server answered 410 Gone: the resourceVersion is too old; list again."""


class PodWatcher:
    """Lists and watches the pods of a selector, and keeps the fleet in step with them."""

    def __init__(self, config: DiscoveryConfig, sink: FleetSink) -> None:
        self.config = config
        self._sink = sink
        self._pods: dict[str, Target] = {}  # pod name -> the worker it is now
        self._task: asyncio.Task[None] | None = None
        self.lists = 0  # how many times the pods were listed (a re-list after 410 counts)
        self.synced = asyncio.Event()  # set once the first list was applied

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pod discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _client(self) -> Any:
        from kubernetes_asyncio import client, config

        if self.config.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=self.config.kubeconfig, client_configuration=configuration
        )
        return client.ApiClient(configuration)

    async def _run(self) -> None:
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                api_client = await self._client()
            except Exception as exc:
                log.error("discovery: no Kubernetes configuration: %s", exc)
                backoff = min(_BACKOFF_MAX, max(_BACKOFF_INITIAL, backoff * 2))
                continue
            async with api_client:
                v1 = client.CoreV1Api(api_client)
                try:
                    version = await self._list(v1)
                    backoff = 0.0
                    while True:
                        version = await self._watch(v1, version)
                except Gone:
                    log.info("discovery: resourceVersion too old (410 Gone); listing again")
                except ApiException as exc:
                    if exc.status == 410:
                        log.info("discovery: 410 Gone; listing again")
                    else:
                        log.warning("discovery: API error %s %s; retrying", exc.status, exc.reason)
                        backoff = min(_BACKOFF_MAX, max(_BACKOFF_INITIAL, backoff * 2))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("discovery: %s: %s; retrying", type(exc).__name__, exc)
                    backoff = min(_BACKOFF_MAX, max(_BACKOFF_INITIAL, backoff * 2))

    async def _list(self, v1: Any) -> str:
        response = await v1.list_namespaced_pod(
            self.config.namespace, label_selector=self.config.selector, _preload_content=False
        )
        body = json.loads(await response.read())
        self.lists += 1
        seen: dict[str, Target] = {}
        for pod in body.get("items") or ():
            target = pod_target(pod, self.config)
            if target is not None:
                seen[pod["metadata"]["name"]] = target
        for name in list(self._pods):
            if name not in seen:
                await self._set(name, None)
        for name, target in seen.items():
            await self._set(name, target)
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, v1: Any, version: str) -> str:
        """Follow events from ``version`` until the API server ends the watch; the last version
        seen."""
        from kubernetes_asyncio import watch

        stream = watch.Watch()
        kwargs: dict[str, Any] = {
            "label_selector": self.config.selector,
            "timeout_seconds": self.config.watch_timeout,
            "allow_watch_bookmarks": True,
        }
        if version:
            kwargs["resource_version"] = version
        async with stream:
            async for event in stream.stream(
                v1.list_namespaced_pod, self.config.namespace, **kwargs
            ):
                kind = event["type"]
                pod = event["raw_object"]
                if kind == "BOOKMARK":
                    version = pod["metadata"]["resourceVersion"]
                    continue
                name = pod["metadata"]["name"]
                version = pod["metadata"].get("resourceVersion") or version
                if kind == "DELETED":
                    await self._set(name, None)
                elif kind in ("ADDED", "MODIFIED"):
                    await self._set(name, pod_target(pod, self.config))
        return version

    async def _set(self, name: str, target: Target | None) -> None:
        known = self._pods.get(name)
        if known == target:
            return
        if known is not None:
            del self._pods[name]
            log.info("discovery: pod %s (%s) is no longer a worker", name, known.url)
            await self._call(self._sink.lost(known.url))
        if target is not None:
            self._pods[name] = target
            log.info("discovery: pod %s is a %s worker at %s", name, target.role, target.url)
            await self._call(self._sink.discovered(target.url, target.role, target.bootstrap_port))

    @staticmethod
    async def _call(change: Any) -> None:
        try:
            await change
        except Exception:
            log.exception("discovery: the fleet change failed")
