"""Several stations on one port: each station's routes under `/s/NAME/` (its page, `ws`,
`stream.opus`, `stream.mp3`, `status`, `healthz`, `metrics`, `control`: webapp.ROUTES), and for
the whole process the lineup page at `/` (every station with what it plays and its listeners),
`/status`, `/healthz` and `/metrics` (labelled `station`) of every station, and `POST /control`
for the lineup itself (with the control token):

    {"type": "add_station", "name": "jazz", "prompt": "late night jazz trio", "seed": 4,
     "temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg": 3.0}
    {"type": "add_station", "name": "mix", "prompts": [{"text": "jazz", "weight": 2}, {"text": "rain"}]}
    {"type": "remove_station", "name": "jazz"}
    {"type": "stations"}

Stations come and go while the others play: the routes look the station up at each request.
"""
from __future__ import annotations

import asyncio
import html
import logging
import typing as tp

from aiohttp import web

from .control import ControlAuth, ControlError, echo_id
from .guard import OriginPolicy, RateLimiter
from .prometheus import LineupExporter
from .status import health
from .webapp import ROUTES, WEB_ROOT, read_command, request_token

log = logging.getLogger(__name__)

#: (method, path under /s/NAME/) → the RadioWeb handler.
HANDLERS = {(method, path): handler for method, path, handler in ROUTES}
#: Lineup command → the fields it accepts (besides "type", "id" and "token").
LINEUP_COMMANDS = {"add_station": {"name", "prompt", "prompts", "seed", "temperature", "top_k", "top_p", "cfg"},
                   "remove_station": {"name"}, "stations": set()}


class LineupConflict(ValueError):
    """The lineup cannot take the change as it stands (the name plays already, no slot is free)."""


class LineupControl(tp.Protocol):
    """What adds and removes stations (engine/stations.py: Lineup). Both block until done and
    raise ValueError with what is wrong (LineupConflict: HTTP 409, else 400); they run in a
    worker thread, never on the loop."""

    def add(self, name: str, settings: tp.Mapping[str, tp.Any]) -> None: ...

    def remove(self, name: str) -> None: ...

    def figures(self) -> dict:
        """The shared batch's figures (slots, steps, stations per step) for /status."""


class LineupWeb:
    """The top-level routes of a lineup; `services`: station name → its StationService (the
    network thread adds and removes them on the loop)."""

    def __init__(self, services: tp.MutableMapping[str, tp.Any], auth: ControlAuth,
                 control: tp.Optional[LineupControl] = None, *, origins: OriginPolicy, control_rate: RateLimiter,
                 web_root: str = WEB_ROOT):
        self.services = services
        self.auth = auth
        self.origins = origins  # which browser pages may use POST /control
        self.control_rate = control_rate  # commands per client address
        self.lineup_control = control
        self.web_root = web_root
        self.exporter = LineupExporter(lambda: {name: s.web.exporter.collector for name, s in list(services.items())})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/status", self.status)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/control", self.control)
        app.router.add_static("/web/", self.web_root)
        app.router.add_get("/s/{station}", self._to_slash)
        app.router.add_route("*", "/s/{station}/{path:.*}", self.station_route)
        return app

    async def station_route(self, request: web.Request) -> web.StreamResponse:
        """/s/NAME/PATH: the station's own handler for PATH."""
        name = request.match_info["station"]
        service = self.services.get(name)
        if service is None:
            raise web.HTTPNotFound(text=f"no station {name[:40]!r} here; the stations are listed at /\n")
        method = "GET" if request.method == "HEAD" else request.method
        handler = HANDLERS.get((method, request.match_info["path"]))
        if handler is None:
            raise web.HTTPNotFound(text="not a station's route: /s/NAME/ (page), ws, stream.opus, stream.mp3, "
                                        "status, healthz, metrics, control\n")
        return await getattr(service.web, handler)(request)

    def _summary(self) -> tp.Dict[str, dict]:
        """name → what it plays, its listeners and how far ahead it is."""
        out = {}
        for name, service in list(self.services.items()):
            status = service.station.status()
            out[name] = {"prompt": status["prompt"], "listeners": len(service.broadcaster.listeners),
                         "buffered_seconds": status["buffered_seconds"], "failed": status["failed"],
                         "page": f"/s/{name}/"}
        return out

    async def index(self, request: web.Request) -> web.Response:
        rows = "".join(
            f'<li><a href="{html.escape(s["page"])}">{html.escape(name)}</a> - {html.escape(s["prompt"])} '
            f'<span class="listeners">({s["listeners"]} listening)</span></li>'
            for name, s in self._summary().items())
        page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>MusicGen radio: stations</title>"
                "<link rel=\"stylesheet\" href=\"/web/style.css\"></head><body><main><h1>Stations</h1>"
                f"<ul id=\"stations\">{rows or '<li>none yet</li>'}</ul></main></body></html>")
        return web.Response(text=page, content_type="text/html")

    async def status(self, request: web.Request) -> web.Response:
        """Every station's /status, by name."""
        body = {"stations": {name: service.publisher.snapshot() for name, service in list(self.services.items())}}
        if self.lineup_control is not None:
            body["batch"] = self.lineup_control.figures()
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: every station's figures, labelled station="NAME"."""
        return web.Response(body=self.exporter.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every station plays; 503 (with which) when one has failed."""
        stations = {name: health(service.station.status(), service.station.config.give_up_after_seconds)
                    for name, service in list(self.services.items())}
        ok = all(code == 200 for code, _ in stations.values())
        return web.json_response({"ok": ok, "stations": {name: body for name, (_, body) in stations.items()}},
                                 status=200 if ok else 503)

    async def control(self, request: web.Request) -> web.Response:
        """POST /control: a lineup command (module docstring); the station's own commands go to
        /s/NAME/control."""
        message, refused = await read_command(request, self.origins, self.control_rate)
        if refused is not None:
            return refused
        command_id = echo_id(message)
        try:
            offered = request_token(request) or (message.get("token") if isinstance(message, dict) else None)
            self.auth.check(offered if isinstance(offered, str) else None)
            kind, name, settings = _parse(message)
            if kind == "stations":
                return web.json_response({"type": "result", "id": command_id, "command": kind,
                                          "stations": self._summary()})
            if self.lineup_control is None:
                raise ControlError("this server's stations are fixed", 409)
            call = (lambda: self.lineup_control.add(name, settings)) if kind == "add_station" else (
                lambda: self.lineup_control.remove(name))
            try:
                await asyncio.get_running_loop().run_in_executor(None, call)
            except ValueError as err:
                raise ControlError(str(err), 409 if isinstance(err, LineupConflict) else 400) from err
        except ControlError as err:
            log.info("control: refused a lineup command: %s", err)
            return web.json_response({"type": "error", "id": command_id, "error": str(err)}, status=err.http_status)
        log.info("control: %s %s done", kind, name)
        return web.json_response({"type": "result", "id": command_id, "command": kind, "name": name, "ok": True,
                                  "stations": sorted(self.services)})

    async def _to_slash(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "/" + (f"?{request.query_string}" if request.query_string else ""))


def _parse(message: tp.Any) -> tp.Tuple[str, str, dict]:
    """(command, station name, settings) of a lineup command; ControlError otherwise."""
    if not isinstance(message, dict) or message.get("type") not in LINEUP_COMMANDS:
        raise ControlError(f"a lineup command is a JSON object of type {', '.join(LINEUP_COMMANDS)}; a station's "
                           f"own commands (set_prompt, ...) go to /s/NAME/control")
    kind = message["type"]
    unknown = set(message) - LINEUP_COMMANDS[kind] - {"type", "id", "token"}
    if unknown:
        raise ControlError(f"{kind} does not take {', '.join(sorted(unknown))}; it takes "
                           f"{', '.join(sorted(LINEUP_COMMANDS[kind])) or 'nothing else'}")
    name = message.get("name", "")
    if kind != "stations" and (not isinstance(name, str) or not name):
        raise ControlError(f"{kind} needs the station's \"name\"")
    settings = {key: value for key, value in message.items() if key in LINEUP_COMMANDS[kind] - {"name"}}
    if kind == "add_station" and "prompt" not in settings and "prompts" not in settings:
        raise ControlError("add_station needs a \"prompt\" (or weighted \"prompts\")")
    return kind, name, settings
