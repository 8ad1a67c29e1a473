"""The fake cluster's object store: resourceVersions, uids, watch fan-out with a bounded history, selectors,
patches (JSON, merge, strategic-merge, server-side apply) and Kubernetes `Status` errors.

Everything runs on the server's event loop, so the store needs no locks; watchers are asyncio queues.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HISTORY = 1000  # events kept for watches resuming from a resourceVersion; older ones get 410 Expired


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error the API server answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def not_found(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found',
                    {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural})


def already_exists(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists',
                    {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural})


def conflict(qualified: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural})


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid with per-field causes, shaped like the API server's field.ErrorList aggregate."""
    qk = f"{kind}.{group}" if group else kind
    msgs = [f"{f}: {m}" for f, m in causes]
    body = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    return ApiError(422, "Invalid", f'{qk} "{name}" is invalid: {body}',
                    {"name": name, "group": group, "kind": kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]})


# --------------------------------------------------------------------------- selectors

_REQ = re.compile(r"^\s*(!)?\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(sel: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def parse_label_selector(sel: str | None) -> list[tuple]:
    """'a=b,c!=d,e,!f,g in (x,y)' → requirements; raises ApiError 400 on syntax errors."""
    reqs: list[tuple] = []
    for part in _split_selector(sel or ""):
        m = _REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, val, setop, setvals = m.groups()
        if neg:
            reqs.append(("!", key, None))
        elif op:
            reqs.append(("!=" if op == "!=" else "=", key, val))
        elif setop:
            reqs.append((setop, key, {v.strip() for v in setvals.split(",") if v.strip()}))
        else:
            reqs.append(("exists", key, None))
    return reqs


def match_labels(labels: dict[str, str], reqs: list[tuple]) -> bool:
    for op, key, val in reqs:
        have = labels.get(key)
        if (op == "=" and have != val) or (op == "!=" and have == val) or (op == "exists" and have is None) \
                or (op == "!" and have is not None) or (op == "in" and have not in val) \
                or (op == "notin" and have in val):
            return False
    return True


def get_path(obj: dict, dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def parse_field_selector(sel: str | None) -> list[tuple[str, str, str]]:
    out = []
    for part in _split_selector(sel or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: '{sel}'; can't understand '{part}'")
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def match_fields(obj: dict, reqs: list[tuple[str, str, str]]) -> bool:
    for path, op, val in reqs:
        have = get_path(obj, path)
        have = "" if have is None else str(have)
        if (op == "=") != (have == val):
            return False
    return True


# --------------------------------------------------------------------------- patches

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# merge keys of the lists kubectl's strategic merge patches touch in the objects pdlab applies
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name", "conditions": "type",
              "ownerReferences": "uid", "subjects": None}
PORT_KEYS = ("containerPort", "port")


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch over the directives kubectl sends ($patch, $retainKeys, $setElementOrder,
    $deleteFromPrimitiveList); lists of known types merge by their merge key, others are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for k, v in patch.items():
        if k.startswith("$setElementOrder/") or k in ("$retainKeys", "$patch"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            out[name] = [x for x in out.get(name, []) if x not in v]
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and isinstance(out.get(k), list) and _merge_key(k, v + out[k]):
            out[k] = _merge_list(out[k], v, _merge_key(k, v + out[k]))
        elif isinstance(v, dict):
            merged = strategic_merge_patch(out.get(k), v)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    if retain is not None:
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_key(name: str, items: list) -> str | None:
    if not items or not all(isinstance(x, dict) for x in items):
        return None
    if name == "ports":
        for key in PORT_KEYS:
            if all(key in x for x in items if "$patch" not in x):
                return key
        return None
    return MERGE_KEYS.get(name)


def _merge_list(current: list, patch: list, key: str) -> list:
    out = [copy.deepcopy(x) for x in current]
    for item in patch:
        idx = next((i for i, x in enumerate(out) if x.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def json_patch(target: Any, ops: list[dict]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy)."""
    doc = copy.deepcopy(target)

    def walk(path: str) -> tuple[Any, str | int]:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        last = parts[-1]
        if isinstance(cur, list):
            return cur, len(cur) if last == "-" else int(last)
        return cur, last

    try:
        for op in ops:
            kind = op["op"]
            if kind in ("move", "copy"):
                src, skey = walk(op["from"])
                value = copy.deepcopy(src[skey])
                if kind == "move":
                    del src[skey]
                op = {"op": "add", "path": op["path"], "value": value}
                kind = "add"
            parent, key = walk(op["path"])
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(key, copy.deepcopy(op["value"]))
                else:
                    parent[key] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if not isinstance(parent, list) and key not in parent:
                    raise KeyError(key)
                parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[key]
            elif kind == "test":
                if parent[key] != op["value"]:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                                   f"request: testing value {op['path']} failed")
    except ApiError:
        raise
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                       f"jsonpatch: {e!r}") from None
    return doc


def apply_patch(target: Any, applied: Any) -> Any:
    """Server-side apply, simplified: the applied configuration overlays the live object (maps merge, lists
    are replaced as the applier gives them). Field ownership and removal of fields a manager stops
    applying are not modelled."""
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    out = dict(target)
    for k, v in applied.items():
        out[k] = apply_patch(out.get(k), v) if isinstance(v, dict) else copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------- the store

@dataclass
class Watcher:
    key: str
    namespace: str | None
    labels: list[tuple]
    fields: list[tuple]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def wants(self, ns: str | None, obj: dict) -> bool:
        return ((self.namespace is None or self.namespace == ns)
                and match_labels(obj.get("metadata", {}).get("labels") or {}, self.labels)
                and match_fields(obj, self.fields))


class Store:
    """All objects of the fake cluster keyed by (resource key, namespace, name)."""

    def __init__(self) -> None:
        self.rv = 1000
        self.objects: dict[tuple[str, str | None, str], dict] = {}
        self.history: deque[tuple[int, str, str | None, str, dict]] = deque(maxlen=HISTORY)
        self.watchers: list[Watcher] = []
        self.changed = asyncio.Event()

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def get(self, key: str, ns: str | None, name: str) -> dict | None:
        return self.objects.get((key, ns, name))

    def list(self, key: str, ns: str | None = None) -> list[dict]:
        out = [o for (k, n, _), o in self.objects.items() if k == key and (ns is None or n == ns)]
        return sorted(out, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def put(self, key: str, ns: str | None, obj: dict, *, created: bool = False) -> dict:
        """Store an object (assigning rv, uid, creationTimestamp) and notify watchers."""
        meta = obj.setdefault("metadata", {})
        if created:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            if ns is not None:
                meta["namespace"] = ns
        meta["resourceVersion"] = self.next_rv()
        self.objects[(key, ns, meta["name"])] = obj
        self._notify("ADDED" if created else "MODIFIED", key, ns, obj)
        return obj

    def remove(self, key: str, ns: str | None, name: str) -> dict | None:
        obj = self.objects.pop((key, ns, name), None)
        if obj is not None:
            obj["metadata"]["resourceVersion"] = self.next_rv()
            self._notify("DELETED", key, ns, obj)
        return obj

    def _notify(self, etype: str, key: str, ns: str | None, obj: dict) -> None:
        snap = copy.deepcopy(obj)
        self.history.append((self.rv, etype, ns, key, snap))
        for w in list(self.watchers):
            if w.key == key and w.wants(ns, snap):
                w.queue.put_nowait((etype, snap))
        self.changed.set()

    def since(self, rv: int, w: Watcher) -> list[tuple[str, dict]] | None:
        """Events after `rv` for a watcher, or None when `rv` is older than the history kept (→ 410)."""
        if self.history and rv < self.history[0][0] - 1 and rv < self.rv:
            return None
        return [(t, o) for (r, t, ns, k, o) in self.history if r > rv and k == w.key and w.wants(ns, o)]
