"""The station's one port (aiohttp): the listener page at `/`, the WebSocket at `/ws`, endless HTTP
streams at `/stream.opus` and `/stream.mp3`, and `/status`.

Each connection is a few small coroutines: a pump that copies packets from the listener's cursor
to its socket, and for WebSockets a reader for client messages and a ticker that forwards the
shared status message (status.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import typing as tp

from aiohttp import WSCloseCode, WSMsgType, web

from . import protocol
from .broadcast import Broadcaster
from .control import Controller, echo_id
from .encoders import OPUS_RATE, PACKET_SECONDS
from .guard import ListenerLimits, OriginPolicy, RateLimiter
from .icy import IcyInterleaver, header_safe
from .prometheus import MetricsExporter
from .status import StatusPublisher, health

log = logging.getLogger(__name__)

#: How long a POST /control body may take to arrive.
CONTROL_BODY_SECONDS = 10.0

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB_ROOT = os.path.join(ROOT, "clients", "web")


#: A station's routes: (method, path under the station's root, RadioWeb handler). One station
#: serves them at `/`; a station of a lineup under `/s/NAME/` (lineup.py).
ROUTES = (("GET", "", "index"), ("GET", "status", "status"), ("GET", "healthz", "healthz"),
          ("POST", "control", "control"), ("OPTIONS", "control", "control_preflight"),
          ("GET", "metrics", "metrics"), ("GET", "ws", "websocket"), ("GET", "stream.opus", "http_stream"),
          ("GET", "stream.mp3", "http_stream"))


class RadioWeb:
    """Handlers bound to one station and its broadcaster."""

    def __init__(self, station, broadcaster: Broadcaster, publisher: StatusPublisher,
                 controller: Controller, now_playing: tp.Callable[[], str], *, origins: OriginPolicy,
                 limits: ListenerLimits, control_rate: RateLimiter, web_root: str = WEB_ROOT):
        self.station = station
        self.origins = origins  # which browser pages may use /ws and /control
        self.limits = limits  # listener caps
        self.control_rate = control_rate  # commands per client address
        self.now_playing = now_playing  # the stream title: the prompt(s) heard now
        self.broadcaster = broadcaster
        self.publisher = publisher
        self.controller = controller
        self.exporter = MetricsExporter(station, broadcaster, controller)
        self.web_root = web_root

    def app(self) -> web.Application:
        app = web.Application()
        for method, path, handler in ROUTES:
            if method == "GET":
                app.router.add_get("/" + path, getattr(self, handler))  # and HEAD
            else:
                app.router.add_route(method, "/" + path, getattr(self, handler))
        app.router.add_static("/web/", self.web_root)
        return app

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(os.path.join(self.web_root, "index.html"))

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.publisher.snapshot())

    async def healthz(self, request: web.Request) -> web.Response:
        code, body = health(self.station.status(), self.station.config.give_up_after_seconds)
        return web.json_response(body, status=code)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text format."""
        return web.Response(body=self.exporter.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def control(self, request: web.Request) -> web.Response:
        """POST /control: one JSON command; the token as `Authorization: Bearer TOKEN`,
        `?token=TOKEN` or a "token" field."""
        message, refused = await read_command(request, self.origins, self.control_rate)
        if refused is not None:
            return refused
        result = self.controller.handle(message, request_token(request))
        return web.json_response(result, status=result.pop("http_status", 200),
                                 headers=self.origins.cors_headers(request.headers))

    async def control_preflight(self, request: web.Request) -> web.Response:
        """A browser asks whether a page of another origin may POST /control."""
        headers = self.origins.cors_headers(request.headers)
        return web.Response(status=204 if headers else 403, headers=headers)

    # -- WebSocket -------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        codec = request.query.get("codec", "opus")
        if codec not in protocol.CODEC_IDS:
            raise web.HTTPBadRequest(text=f"unknown codec {str(codec)[:20]!r}: use pcm or opus\n")
        if not self.origins.allows(request.headers):
            raise web.HTTPForbidden(text="cross-site WebSocket refused: start the station with "
                                         "--allow-origin ORIGIN to allow this page\n")
        ws = web.WebSocketResponse(max_msg_size=protocol.MAX_CLIENT_MESSAGE_BYTES, heartbeat=20.0,
                                   compress=False)  # audio does not deflate; encode once
        await ws.prepare(request)
        address = client_address(request)
        full = self.limits.admit(address)
        if full is not None:
            await _close_ws(ws, request, protocol.CLOSE_TRY_AGAIN_LATER, full)
            return ws
        self.limits.joined(address)
        try:
            return await self._serve_websocket(ws, request, codec)
        finally:
            self.limits.left(address)

    async def _serve_websocket(self, ws, request: web.Request, codec: str) -> web.WebSocketResponse:
        _small_send_buffers(request)
        b, station = self.broadcaster, self.station
        rate = OPUS_RATE if codec == "opus" else station.sample_rate
        hello = protocol.hello(
            codec=codec, sample_rate=rate, stream_sample_rate=station.sample_rate,
            channels=station.channels, frame_samples=int(rate * PACKET_SECONDS),
            burst_seconds=b.burst_samples / station.sample_rate,
            max_lag_seconds=b.max_lag_samples / station.sample_rate,
            station={"model": station.model_config.name, "prompt": self.now_playing(),
                     "seed": station.config.seed},
            opus_head=b.opus_head if codec == "opus" else None)
        await ws.send_str(json.dumps(hello))
        listener = b.join(f"ws-{codec}", codec)
        listener.on_drop = lambda reason, code: asyncio.ensure_future(
            _close_ws(ws, request, code, reason, timeout=1.0, always_cut=code == protocol.CLOSE_TOO_SLOW))

        async def send(packet):
            await ws.send_bytes(packet.framed)

        pump = asyncio.ensure_future(b.feed(listener, send))
        listener.task = pump
        ticker = asyncio.ensure_future(self._status_ticker(ws))
        try:
            await self._read_client(ws, request)
        finally:
            for task in (pump, ticker):
                task.cancel()
            await asyncio.gather(pump, ticker, return_exceptions=True)
            b.leave(listener)
            if not ws.closed:
                await _close_ws(ws, request, WSCloseCode.GOING_AWAY, "station closing")
            await _release_transport(request)
        return ws

    async def _status_ticker(self, ws) -> None:
        while not ws.closed:
            message = await self.publisher.next_message()
            await ws.send_str(message)

    async def _read_client(self, ws, request) -> None:
        """Client messages: {"type": "ping"} is answered with a pong and control commands with
        their result or error; a message that is not a JSON object closes the connection."""
        token = request_token(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                message = parse_json(msg.data)
                if not isinstance(message, dict):
                    await _close_ws(ws, request, WSCloseCode.POLICY_VIOLATION,
                                    "messages are JSON objects with a \"type\"")
                    break
                if message.get("type") == "ping":
                    await ws.send_str(json.dumps({"type": "pong", "time": time.time()}))
                    continue
                over = too_many(request, self.control_rate)  # the origin was checked once, at the upgrade
                if over is not None:
                    await ws.send_str(json.dumps({"type": "error", "id": echo_id(message), "error": over}))
                    continue
                result = self.controller.handle(message, token)
                result.pop("http_status", None)
                await ws.send_str(json.dumps(result))
                continue
            if msg.type == WSMsgType.BINARY:
                await _close_ws(ws, request, WSCloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
                break
            if msg.type == WSMsgType.ERROR:
                break  # e.g. an oversized message: aiohttp has closed with 1009

    # -- HTTP streams --------------------------------------------------------------------------
    async def http_stream(self, request: web.Request) -> web.StreamResponse:
        address = client_address(request)
        full = self.limits.admit(address)
        if full is not None:
            raise web.HTTPServiceUnavailable(text=full + "\n", headers={"Retry-After": "30"})
        self.limits.joined(address)
        try:
            return await self._serve_http_stream(request)
        finally:
            self.limits.left(address)

    async def _serve_http_stream(self, request: web.Request) -> web.StreamResponse:
        is_opus = request.path.endswith(".opus")
        key, kind = ("ogg", "http-opus") if is_opus else ("mp3", "http-mp3")
        icy = IcyInterleaver() if not is_opus and request.headers.get("Icy-MetaData") == "1" else None
        headers = {"Content-Type": "audio/ogg" if is_opus else "audio/mpeg",
                   "Cache-Control": "no-cache, no-store", "icy-name": "MusicGen radio",
                   "icy-description": header_safe(self.now_playing())}
        if icy is not None:
            headers["icy-metaint"] = str(icy.metaint)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        _small_send_buffers(request)
        listener = self.broadcaster.join(kind, key)
        # Too slow: cut (its buffers are full); otherwise the pump stops and the response ends.
        listener.on_drop = lambda reason, code: (code == protocol.CLOSE_TOO_SLOW and request.transport
                                                 and request.transport.abort())
        if is_opus:
            await response.write(self.broadcaster.ogg_headers)

        async def send(packet):
            await response.write(packet.payload if icy is None else icy.wrap(packet.payload, self.now_playing()))

        listener.task = asyncio.current_task()
        try:
            await self.broadcaster.feed(listener, send)
        except asyncio.CancelledError:
            pass
        finally:
            self.broadcaster.leave(listener)
        return response


def too_many(request: web.Request, control_rate: RateLimiter) -> tp.Optional[str]:
    """The error for a client over its control rate (counted per address), else None."""
    if control_rate.allow(client_address(request)):
        return None
    return (f"too many commands: at most {control_rate.rate:g} per second "
            f"(bursts of {control_rate.burst:g}); try again shortly")


async def read_command(request: web.Request, origins: OriginPolicy,
                       control_rate: RateLimiter) -> tp.Tuple[tp.Any, tp.Optional[web.Response]]:
    """A POST /control's JSON command (None when it is not JSON or does not arrive within
    CONTROL_BODY_SECONDS), or the answer refusing it: another origin (403), over the client's
    rate (429), too large (413)."""
    cors = origins.cors_headers(request.headers)

    def refuse(error: str, status: int) -> tp.Tuple[None, web.Response]:
        return None, web.json_response({"type": "error", "id": None, "error": error}, status=status, headers=cors)
    if not origins.allows(request.headers):
        return refuse("cross-site requests are refused: this page's origin is not allowed; start the station "
                      "with --allow-origin ORIGIN to allow it", 403)
    over = too_many(request, control_rate)
    if over is not None:
        return refuse(over, 429)
    if request.content_length is not None and request.content_length > protocol.MAX_CLIENT_MESSAGE_BYTES:
        return refuse(f"a command is at most {protocol.MAX_CLIENT_MESSAGE_BYTES} bytes", 413)
    try:
        body = await asyncio.wait_for(request.content.read(protocol.MAX_CLIENT_MESSAGE_BYTES + 1),
                                      timeout=CONTROL_BODY_SECONDS)
    except asyncio.TimeoutError:
        return None, None
    return parse_json(body), None


def parse_json(data: tp.Union[str, bytes]) -> tp.Any:
    """The JSON value in `data`, or None for anything else (invalid text or UTF-8, nested too
    deeply to parse)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def client_address(request: web.Request) -> str:
    """The peer's address (behind a reverse proxy: the proxy's; see the README)."""
    return request.remote or "unknown"


def request_token(request: web.Request) -> tp.Optional[str]:
    """The control token a request offers: `Authorization: Bearer TOKEN` or `?token=TOKEN`."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("token")


def _small_send_buffers(request: web.Request) -> None:
    """Keep socket buffering small so that a stalled listener shows up as lag quickly."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        except OSError:
            pass
    transport.set_write_buffer_limits(high=32 * 1024)


async def _release_transport(request: web.Request, grace_seconds: float = 1.0) -> None:
    """A peer that has gone but left audio unread in our send buffer must not hold the socket."""
    transport = request.transport
    deadline = time.monotonic() + grace_seconds
    while transport is not None and not transport.is_closing() and transport.get_write_buffer_size():
        if time.monotonic() > deadline:
            transport.abort()
            return
        await asyncio.sleep(0.05)


async def _close_ws(ws, request, code: int, reason: str, timeout: float = 2.0,
                    always_cut: bool = False) -> None:
    """Send a close frame with `reason`; cut the connection if the peer does not answer within
    `timeout` (a dropped, lagging listener is cut in any case: `always_cut`)."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120]), timeout=timeout)
        if not always_cut:
            return
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        pass
    if request.transport is not None:
        request.transport.abort()
