"""A recorded-watch Kubernetes API server for the discovery tests: just the pod list and watch of
one namespace, on loopback, in the shapes the real API server sends.

- ``GET /api/v1/namespaces/NS/pods?labelSelector=...``: a ``PodList`` with
  ``metadata.resourceVersion``;
- the same with ``watch=true`` (``&resourceVersion=RV``): a chunked stream of JSON lines
  ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": <Pod>}`` after RV; when RV is older than
  what is kept (after :meth:`compact`), the real server's answer: HTTP 200 then one event
  ``{"type": "ERROR", "object": <Status code 410, reason Expired>}``, and the stream ends.

No kube-apiserver could be installed from the package registries reached here (Debian has etcd
but not the API server; PyPI and npm have neither), hence this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from pathlib import Path
from typing import Any

from aiohttp import web


def pod(
    name: str,
    port: int,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str = "herd",
) -> dict[str, Any]:
    """A Pod as the API server returns it (the fields discovery reads, and the usual others)."""
    condition = "True" if ready else "False"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "0",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": dict(labels or {"app": "vllm", "tier": "gpu"}),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "containers": [
                {
                    "name": "engine",
                    "image": "vllm/vllm-openai:latest",
                    "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
                }
            ],
            "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastProbeTime": None},
                {"type": "Ready", "status": condition, "lastProbeTime": None},
                {"type": "ContainersReady", "status": condition, "lastProbeTime": None},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None},
            ],
        },
    }


def _selected(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class KubeApi:
    def __init__(self, namespace: str = "herd") -> None:
        self.namespace = namespace
        self._pods: dict[str, dict[str, Any]] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._version = 100
        self._oldest = 0  # a watch from an older version gets 410 Gone
        self.lists: list[str] = []  # the label selector of each list call
        self.watches: list[str | None] = []  # the resourceVersion of each watch call
        self.gone = 0  # how many watches were answered 410
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._generation = 0  # bumped to end every open watch
        self._held = False  # watches wait (the watch is "down")
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- control from the test (any thread) -----------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        self._call(self._hold)  # ends the open watches
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def put(self, obj: dict[str, Any]) -> None:
        """Create or replace a pod (ADDED or MODIFIED)."""
        self._call(self._put, obj)

    def delete(self, name: str) -> None:
        self._call(self._delete, name)

    def hold(self) -> None:
        """End the open watches and keep new ones waiting (the client's watch is down) until
        :meth:`compact`."""
        self._call(self._hold)

    def compact(self) -> None:
        """Forget the events so far (as etcd compaction does) and let watches in again: a watch
        from a version before the changes made since :meth:`hold` is answered 410 Gone."""
        self._call(self._compact)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {
                                "cluster": "test",
                                "user": "test",
                                "namespace": self.namespace,
                            },
                        }
                    ],
                    "current-context": "test",
                }
            )
        )
        return path

    def _call(self, fn: Any, *args: Any) -> None:
        async def run() -> None:
            fn(*args)
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- the state (on the server's loop) -------------------------------------------------------
    def _bump(self, kind: str, obj: dict[str, Any]) -> None:
        self._version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._version)
        if kind != "DELETED":
            self._pods[obj["metadata"]["name"]] = obj
        self._events.append((self._version, kind, obj))

    def _put(self, obj: dict[str, Any]) -> None:
        kind = "MODIFIED" if obj["metadata"]["name"] in self._pods else "ADDED"
        self._bump(kind, obj)

    def _delete(self, name: str) -> None:
        obj = self._pods.pop(name)
        self._bump("DELETED", obj)

    def _hold(self) -> None:
        self._held = True
        self._generation += 1

    def _compact(self) -> None:
        self._events.clear()
        self._oldest = self._version
        self._held = False

    # -- HTTP ------------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods_handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _pods_handler(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["ns"] != self.namespace:
            return web.json_response({"kind": "PodList", "apiVersion": "v1", "items": []})
        selector = request.query.get("labelSelector", "")
        if request.query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, selector)
        self.lists.append(selector)
        items = [p for p in self._pods.values() if _selected(p["metadata"]["labels"], selector)]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, selector: str) -> web.StreamResponse:
        since = request.query.get("resourceVersion")
        self.watches.append(since)
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(lambda: not self._held)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        start = int(since) if since else self._version
        if start < self._oldest:
            self.gone += 1
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {start} ({self._oldest})",
                "reason": "Expired",
                "code": 410,
            }
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            await response.write_eof()
            return response
        generation = self._generation
        sent = start
        timeout = float(request.query.get("timeoutSeconds", "300"))
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for version, kind, obj in list(self._events):
                if version <= sent:
                    continue
                sent = version
                if _selected(obj["metadata"]["labels"], selector):
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    await response.write(line)
            if self._generation != generation or loop.time() >= end:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), end - loop.time())
        await response.write_eof()
        return response
