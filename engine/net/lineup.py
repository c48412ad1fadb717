"""Several stations on one port: each station's routes under `/s/NAME/` (its page, `ws`,
`stream.opus`, `stream.mp3`, `status`, `healthz`, `metrics`, `control`: webapp.py), and for the
whole process the lineup page at `/` (every station with what it plays and its listeners),
`/status` and `/healthz` of every station."""
from __future__ import annotations

import html
import typing as tp

from aiohttp import web

from .status import health
from .webapp import WEB_ROOT


class LineupWeb:
    """The top-level routes of a lineup; `services`: station name → its StationService."""

    def __init__(self, services: tp.Mapping[str, tp.Any], web_root: str = WEB_ROOT):
        self.services = services
        self.web_root = web_root

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/status", self.status)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_static("/web/", self.web_root)
        for name, service in self.services.items():
            app.router.add_get(f"/s/{name}", self._to_slash)
            app.add_subapp(f"/s/{name}", service.web.app())
        return app

    def _summary(self) -> tp.Dict[str, dict]:
        """name → what it plays, its listeners and how far ahead it is."""
        out = {}
        for name, service in self.services.items():
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
                f"<ul id=\"stations\">{rows}</ul></main></body></html>")
        return web.Response(text=page, content_type="text/html")

    async def status(self, request: web.Request) -> web.Response:
        """Every station's /status, by name."""
        return web.json_response({"stations": {name: service.publisher.snapshot()
                                               for name, service in self.services.items()}})

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every station plays; 503 (with which) when one has failed."""
        stations = {name: health(service.station.status(), service.station.config.give_up_after_seconds)
                    for name, service in self.services.items()}
        ok = all(code == 200 for code, _ in stations.values())
        return web.json_response({"ok": ok, "stations": {name: body for name, (_, body) in stations.items()}},
                                 status=200 if ok else 503)

    async def _to_slash(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "/" + (f"?{request.query_string}" if request.query_string else ""))
