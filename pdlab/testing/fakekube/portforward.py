"""The pod port-forward websocket (`v4.channel.k8s.io`), as the kubelet serves it to the Python client.

Per forwarded port i the server uses channel 2i for data and 2i+1 for errors; it first sends, on each of
the two channels, the channel byte followed by the port number (2 bytes, little-endian); afterwards every
binary frame is a channel byte followed by payload. The data goes to the local port that stands in for
the pod's port; when that connection closes, the websocket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

if TYPE_CHECKING:
    from pdlab.testing.fakekube.cluster import Cluster
    from pdlab.testing.fakekube.controller import Controller

PROTOCOLS = ("v4.channel.k8s.io",)


def handler(cluster: Cluster, controller: Controller) -> Any:
    """The websocket endpoint of `pods/portforward` (protocol v4.channel.k8s.io) for one fake cluster."""
    async def portforward(ws: WebSocket) -> None:
        ns, name = ws.path_params["ns"], ws.path_params["name"]
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        proto = next((p for p in offered if p in PROTOCOLS), None)
        pod = cluster.store.get("pods", ns, name)
        try:
            ports = [int(p) for p in ws.query_params.get("ports", "").split(",") if p]
        except ValueError:
            ports = []
        if proto is None or pod is None or not ports or (pod.get("status") or {}).get("phase") != "Running":
            await ws.close(code=1008)  # the handshake fails: the client sees the upgrade refused
            return
        await ws.accept(subprotocol=proto)
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
        for i, port in enumerate(ports):
            head = port.to_bytes(2, "little")
            await ws.send_bytes(bytes([2 * i]) + head)
            await ws.send_bytes(bytes([2 * i + 1]) + head)
            local = controller.port_for(ns, name, port)
            try:
                conns.append(await asyncio.open_connection("127.0.0.1", local))
            except OSError:
                conns.append(None)
                uid = pod["metadata"]["uid"]
                await ws.send_bytes(bytes([2 * i + 1]) + (
                    f"an error occurred forwarding {port} -> {port}: error forwarding port {port} to pod {uid}, "
                    f"uid : failed to execute portforward in network namespace: failed to connect to "
                    f"localhost:{port} inside namespace \"{uid}\", IPv4: dial tcp4 127.0.0.1:{port}: connect: "
                    f"connection refused").encode())
        if all(c is None for c in conns):
            await ws.close()
            return

        async def pod_to_ws(i: int, reader: asyncio.StreamReader) -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                await ws.send_bytes(bytes([2 * i]) + data)

        async def ws_to_pod() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                data = msg.get("bytes") or (msg.get("text") or "").encode()
                if not data:
                    continue
                ch, payload = data[0], data[1:]
                if ch % 2 == 0 and ch // 2 < len(conns) and conns[ch // 2] is not None and payload:
                    writer = conns[ch // 2][1]
                    writer.write(payload)
                    await writer.drain()

        tasks = [asyncio.create_task(ws_to_pod())]
        tasks += [asyncio.create_task(pod_to_ws(i, c[0])) for i, c in enumerate(conns) if c is not None]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except WebSocketDisconnect:
            pass
        finally:
            for t in tasks:
                t.cancel()
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: a reset connection is the normal end of a forward
            for c in conns:
                if c is not None:
                    c[1].close()
            with contextlib.suppress(Exception):
                await ws.close()

    return portforward
