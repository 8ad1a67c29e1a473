"""The HTTP surface of the fake API server (starlette): discovery, OpenAPI v3, CRUD, patch, watch, tables,
pod logs and the port-forward websocket, with `Status` bodies for every error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from pdlab.testing.fakekube import portforward
from pdlab.testing.fakekube.rbgprofiles import conversion_failure
from pdlab.testing.fakekube.resources import Res
from pdlab.testing.fakekube.store import (
    ApiError,
    Watcher,
    get_path,
    match_fields,
    match_labels,
    not_found,
    parse_field_selector,
    parse_label_selector,
)

if TYPE_CHECKING:
    from pdlab.testing.fakekube.cluster import Cluster
    from pdlab.testing.fakekube.controller import Controller

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.4-fakekube", "gitCommit": "0000000",
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.6",
           "compiler": "gc", "platform": "linux/amd64"}


RBG_PATH = re.compile(r"^/apis/workloads\.x-k8s\.io/(v[0-9a-z]+)/(?:namespaces/[^/]+/)?rolebasedgroups(?:/|$)")


def _status_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.status(), status_code=e.code)


def _json(obj: Any, code: int = 200, warnings: list[str] | None = None) -> Response:
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
    return Response(json.dumps(obj, separators=(",", ":")), status_code=code, media_type="application/json",
                    headers=headers)


def build_app(cluster: Cluster, controller: Controller) -> Starlette:
    """The ASGI app serving one fake cluster (its store and its simulated controller's pods)."""

    async def version(request: Request) -> Response:
        return _json(VERSION)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def api_root(request: Request) -> Response:
        return _json(cluster.registry().api_versions(cluster.server_address))

    async def apis_root(request: Request) -> Response:
        return _json(cluster.registry().group_list())

    async def openapi_v3_root(request: Request) -> Response:
        return _json(cluster.registry().openapi_root())

    async def openapi_v3(request: Request) -> Response:
        parts = request.path_params["path"].strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2]) if len(parts) > 2 else ("", "")
        doc = cluster.registry().openapi_gv(group, version)
        if doc is None:
            return _status_response(ApiError(404, "NotFound", "the server could not find the requested resource"))
        return _json(doc)

    async def openapi_v2(request: Request) -> Response:
        return _status_response(ApiError(404, "NotFound", "the server could not find the requested resource"))

    async def resource(request: Request) -> Response:
        try:
            fault = cluster.opt.faults.api_error(request.method, request.url.path)
            if fault is not None:
                raise ApiError(fault.status, {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable",
                                              429: "TooManyRequests"}.get(fault.status, "InternalError"),
                               f"fakekube: injected {fault.status} for {request.method} {request.url.path}")
            m = RBG_PATH.match(request.url.path)
            if (m and cluster.opt.faults.conversion_webhook_down and cluster.profile.conversion_webhook
                    and m.group(1) != cluster.profile.storage):
                raise ApiError(500, "InternalError", conversion_failure())
            return await _resource(request)
        except ApiError as e:
            return _status_response(e)

    async def _resource(request: Request) -> Response:
        parts = request.path_params["path"].strip("/").split("/")
        q = request.query_params
        reg = cluster.registry()
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            if len(parts) == 2:
                doc = reg.group_doc(parts[1])
                if doc is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                return _json({"kind": "APIGroup", "apiVersion": "v1", **doc})
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            doc = reg.resource_list(group, version)
            if doc is None or request.method != "GET":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(doc)
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and reg.find(group, version, rest[2]) is not None:
            ns, rest = rest[1], rest[2:]
        r = cluster.res(group, version, rest[0])
        if r.namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub and sub not in r.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        method = request.method
        verb = {"GET": "watch" if q.get("watch") in ("true", "1") else ("get" if name else "list"),
                "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}.get(method, "get")
        auth = request.headers.get("authorization", "")
        # a namespace object is authorized within itself (a Role may grant `get` on its own namespace)
        scope = ns if r.namespaced else (name if r.plural == "namespaces" else None)
        cluster.authorize(auth.removeprefix("Bearer ").strip() or None, verb, r, scope, name, sub)
        fm, fv = q.get("fieldManager"), q.get("fieldValidation", "Strict") or "Strict"
        dry = q.get("dryRun") == "All"
        if method == "GET" and name is None:
            if q.get("watch") in ("true", "1"):
                return _watch(request, r, version, ns)
            return _list(request, r, version, ns)
        if method == "GET" and sub == "log":
            return await _logs(request, ns or "default", name)
        if method == "GET":
            obj = cluster.store.get(r.key, ns if r.namespaced else None, name)
            if obj is None:
                raise not_found(r.qualified(), name, r.group, r.plural)
            return _json(cluster.present(r, obj, version))
        if method == "POST" and name is None:
            body = await _body(request)
            _check_kind(r, version, body)
            warn = cluster.validate(r, body, version, fv) if fv != "Strict" else []
            obj = cluster.create(r, ns, body, version=version, field_manager=fm, field_validation=fv, dry_run=dry)
            return _json(cluster.present(r, obj, version), 201, warn)
        if method == "PUT" and name:
            body = await _body(request)
            _check_kind(r, version, body)
            obj = cluster.update(r, ns, name, body, version=version, subresource=sub, field_manager=fm,
                                 field_validation=fv, dry_run=dry)
            return _json(cluster.present(r, obj, version))
        if method == "PATCH" and name:
            ctype = request.headers.get("content-type", "")
            raw = await request.body()
            try:
                body = yaml.safe_load(raw) if "apply-patch+yaml" in ctype else json.loads(raw or b"null")
            except (ValueError, yaml.YAMLError) as e:
                raise ApiError(400, "BadRequest", f"error decoding patch: {e}") from None
            obj, created = cluster.patch(r, ns, name, ctype, body, version=version, subresource=sub,
                                         field_manager=fm, force=q.get("force") == "true", field_validation=fv,
                                         dry_run=dry)
            return _json(cluster.present(r, obj, version), 201 if created else 200)
        if method == "DELETE" and name:
            opts = await _delete_options(request)
            obj = cluster.delete(r, ns, name, propagation=opts.get("propagationPolicy"),
                                 grace=opts.get("gracePeriodSeconds"), dry_run=dry)
            if r.crd or obj["metadata"].get("deletionTimestamp"):
                return _json(cluster.present(r, obj, version))
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "details": {"name": name, "group": r.group, "kind": r.plural,
                                      "uid": obj["metadata"].get("uid")}})
        if method == "DELETE":
            opts = await _delete_options(request)
            items = _select(request, r, ns)
            for obj in items:
                cluster.delete(r, obj["metadata"].get("namespace") if r.namespaced else None,
                               obj["metadata"]["name"], propagation=opts.get("propagationPolicy"),
                               grace=opts.get("gracePeriodSeconds"))
            return _json(_list_doc(r, version, items))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _check_kind(r: Res, version: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        kind, av = body.get("kind"), body.get("apiVersion")
        if (kind and kind != r.kind) or (av and av != r.api_version(version)):
            raise ApiError(400, "BadRequest", f"the API version in the data ({av}) does not match the expected "
                           f"API version ({r.api_version(version)})")

    async def _body(request: Request) -> Any:
        raw = await request.body()
        try:
            if "yaml" in request.headers.get("content-type", ""):
                return yaml.safe_load(raw)
            return json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"couldn't get version/kind; json parse error: {e}") from None

    async def _delete_options(request: Request) -> dict:
        raw = await request.body()
        opts: dict = {}
        if raw:
            with contextlib.suppress(ValueError):
                opts = json.loads(raw) or {}
        q = request.query_params
        if q.get("propagationPolicy"):
            opts["propagationPolicy"] = q["propagationPolicy"]
        if q.get("gracePeriodSeconds"):
            opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        return opts

    def _select(request: Request, r: Res, ns: str | None) -> list[dict]:
        q = request.query_params
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        return [o for o in cluster.store.list(r.key, ns if r.namespaced else None)
                if match_labels(o["metadata"].get("labels") or {}, labels) and match_fields(o, fields)]

    def _list_doc(r: Res, version: str, items: list[dict]) -> dict:
        out = []
        for o in items:
            p = cluster.present(r, o, version)
            if not r.crd:  # built-in lists omit each item's kind/apiVersion, as the real server does
                p.pop("kind", None)
                p.pop("apiVersion", None)
            out.append(p)
        return {"kind": f"{r.kind}List", "apiVersion": r.api_version(version),
                "metadata": {"resourceVersion": str(cluster.store.rv)}, "items": out}

    def _list(request: Request, r: Res, version: str, ns: str | None) -> Response:
        items = _select(request, r, ns)
        if "as=Table" in request.headers.get("accept", ""):
            return _json(_table(r, version, items, request.query_params.get("includeObject", "PartialObjectMetadata")))
        return _json(_list_doc(r, version, items))

    def _table(r: Res, version: str, items: list[dict], include: str) -> dict:
        cols, fns = _columns(r)
        rows = []
        for o in items:
            p = cluster.present(r, o, version)
            obj = p if include == "Object" else {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                 "metadata": p["metadata"]}
            rows.append({"cells": [fn(p) for fn in fns], "object": None if include == "None" else obj})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(cluster.store.rv)}, "columnDefinitions": cols, "rows": rows}

    def _watch(request: Request, r: Res, version: str, ns: str | None) -> Response:
        q = request.query_params
        store = cluster.store
        w = Watcher(r.key, ns if r.namespaced else None, parse_label_selector(q.get("labelSelector")),
                    parse_field_selector(q.get("fieldSelector")))
        rv = q.get("resourceVersion")
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        faults = cluster.opt.faults
        if rv in (None, "", "0"):
            initial = [("ADDED", o) for o in store.list(r.key, w.namespace) if w.wants(o["metadata"].get("namespace"), o)]
        else:
            try:
                initial = store.since(int(rv), w)
            except ValueError:
                raise ApiError(400, "BadRequest", f'invalid resource version "{rv}"') from None
        store.watchers.append(w)

        def line(etype: str, obj: dict) -> bytes:
            return (json.dumps({"type": etype, "object": obj}, separators=(",", ":")) + "\n").encode()

        async def gen() -> Any:
            try:
                if initial is None:
                    yield line("ERROR", ApiError(410, "Expired", f"too old resource version: {rv} "
                                                 f"({store.history[0][0]})").status())
                    return
                sent = 0
                for etype, obj in initial:
                    yield line(etype, cluster.present(r, obj, version))
                    sent += 1
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while loop.time() < deadline:
                    if faults.watch_drop_after is not None and sent >= faults.watch_drop_after:
                        faults.watch_drops += 1
                        return
                    wait = min(deadline - loop.time(), cluster.opt.bookmark_interval_s)
                    try:
                        etype, obj = await asyncio.wait_for(w.queue.get(), timeout=max(0.01, wait))
                    except TimeoutError:
                        if bookmarks and loop.time() < deadline:
                            yield line("BOOKMARK", {"kind": r.kind, "apiVersion": r.api_version(version),
                                                    "metadata": {"resourceVersion": str(store.rv)}})
                        continue
                    yield line(etype, cluster.present(r, obj, version))
                    sent += 1
            finally:
                with contextlib.suppress(ValueError):
                    store.watchers.remove(w)

        return StreamingResponse(gen(), media_type="application/json")

    async def _logs(request: Request, ns: str, name: str) -> Response:
        q = request.query_params
        pod = cluster.store.get("pods", ns, name)
        if pod is None:
            raise not_found("pods", name, "", "pods")
        containers = [c["name"] for c in pod["spec"].get("containers", [])]
        ctr = q.get("container") or (containers[0] if len(containers) == 1 else None)
        if ctr is None:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: "
                           f"{containers}")
        if ctr not in containers:
            raise ApiError(400, "BadRequest", f"container {ctr} is not valid for pod {name}")
        previous = q.get("previous") == "true"
        text = controller.logs(ns, name, previous=previous)
        if text is None:
            if previous:
                raise ApiError(400, "BadRequest", f'previous terminated container "{ctr}" in pod "{name}" not found')
            cs = (pod.get("status") or {}).get("containerStatuses") or [{}]
            reason = ((cs[0].get("state") or {}).get("waiting") or {}).get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{ctr}" in pod "{name}" is waiting to start: {reason}')
        tail = q.get("tailLines")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail):]) if int(tail) > 0 else ""
        if q.get("follow") != "true":
            return PlainTextResponse(text)

        async def follow() -> Any:
            yield text.encode()
            seen = len(controller.logs(ns, name) or "")
            for _ in range(36000):  # bounded: an hour at 0.1 s
                await asyncio.sleep(0.1)
                cur = controller.logs(ns, name)
                if cur is None or cluster.store.get("pods", ns, name) is None:
                    return
                if len(cur) > seen:
                    yield cur[seen:].encode()
                    seen = len(cur)

        return StreamingResponse(follow(), media_type="text/plain")

    routes = [
        Route("/version", version), Route("/healthz", healthz), Route("/livez", healthz), Route("/readyz", healthz),
        Route("/api", api_root), Route("/apis", apis_root),
        Route("/openapi/v2", openapi_v2), Route("/openapi/v3", openapi_v3_root),
        Route("/openapi/v3/{path:path}", openapi_v3),
        WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/portforward", portforward.handler(cluster, controller)),
        Route("/{path:path}", resource, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- tables


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    s = int((datetime.now(UTC) - datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)).total_seconds())
    s = max(s, 0)
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    return f"{h}h{m % 60}m" if h < 8 and m % 60 else (f"{h}h" if h < 48 else f"{h // 24}d")


def _pod_cells(p: dict) -> list[Any]:
    st = p.get("status") or {}
    css = st.get("containerStatuses") or []
    total = len(p["spec"].get("containers", []))
    ready = sum(1 for c in css if c.get("ready"))
    reason = st.get("phase", "Pending")
    for c in css:
        w = (c.get("state") or {}).get("waiting")
        if w:
            reason = w.get("reason", reason)
    if reason == "Pending" and p["spec"].get("nodeName"):
        reason = "ContainerCreating"
    if p["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(c.get("restartCount", 0) for c in css)
    return [p["metadata"]["name"], f"{ready}/{total}", reason, restarts,
            _age(p["metadata"].get("creationTimestamp")), st.get("podIP") or "<none>",
            p["spec"].get("nodeName") or "<none>", "<none>", "<none>"]


def _jsonpath(obj: dict, path: str) -> Any:
    m = re.match(r"^\.(.+?)\[\?\(@\.(\w+)==['\"](.+?)['\"]\)\]\.(.+)$", path)
    if m:
        items = get_path(obj, m.group(1)) or []
        for it in items:
            if isinstance(it, dict) and str(it.get(m.group(2))) == m.group(3):
                return get_path(it, m.group(4))
        return None
    return get_path(obj, path.lstrip("."))


def _columns(r: Res) -> tuple[list[dict], list]:
    def col(name: str, typ: str = "string", fmt: str = "", prio: int = 0) -> dict:
        return {"name": name, "type": typ, "format": fmt, "description": name, "priority": prio}

    name_col = col("Name", fmt="name")
    age = col("Age")
    if r.key == "pods":
        cols = [name_col, col("Ready"), col("Status"), col("Restarts", "string"), age, col("IP", prio=1),
                col("Node", prio=1), col("Nominated Node", prio=1), col("Readiness Gates", prio=1)]
        return cols, [lambda p, i=i: _pod_cells(p)[i] for i in range(len(cols))]
    if r.key == "services":
        def ports(o: dict) -> str:
            return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in o["spec"].get("ports", [])) or "<none>"
        return ([name_col, col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), age],
                [lambda o: o["metadata"]["name"], lambda o: o["spec"].get("type", "ClusterIP"),
                 lambda o: o["spec"].get("clusterIP", ""), lambda o: "<none>", ports,
                 lambda o: _age(o["metadata"].get("creationTimestamp"))])
    if r.crd and r.printer_columns:
        cols, fns = [name_col], [lambda o: o["metadata"]["name"]]
        for cname, path, typ in r.printer_columns:
            cols.append(col(cname.title() if cname.isupper() else cname, "string" if typ == "date" else typ))
            if path == ".metadata.creationTimestamp":
                fns.append(lambda o: _age(o["metadata"].get("creationTimestamp")))
            else:
                fns.append(lambda o, path=path: _jsonpath(o, path))
        return cols, fns
    return [name_col, age], [lambda o: o["metadata"]["name"], lambda o: _age(o["metadata"].get("creationTimestamp"))]
