"""The network side as one service: the broadcaster (encoders, listeners), the status publisher,
the web app on one port and the Icecast sources, all on one asyncio loop in a thread of its own."""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import typing as tp

from aiohttp import web

from .broadcast import Broadcaster
from .config import NetworkConfig
from .control import ControlAuth, Controller
from .guard import FirstRequestDeadline, ListenerLimits, OriginPolicy, RateLimiter
from .icecast import IcecastSource, parse_icecast_url
from .lineup import LineupControl, LineupWeb
from .status import StatusPublisher
from .webapp import RadioWeb

log = logging.getLogger(__name__)


def control_rate(config: NetworkConfig) -> RateLimiter:
    """Commands per client address: --control-rate, in bursts of 4 times that."""
    return RateLimiter(config.control_per_second, burst=max(1, round(4 * config.control_per_second)))


class StationService:
    """One station's network side: its broadcaster (encoders, listeners), status publisher,
    controller, Icecast sources (`icecast_urls`: its own mounts) and the handlers of its routes
    (`web`). The process's control token and listener caps are shared (`auth`, `limits`)."""

    def __init__(self, station, config: NetworkConfig, auth: ControlAuth, limits: ListenerLimits,
                 icecast_urls: tp.Sequence[str]):
        self.station = station
        self.broadcaster = Broadcaster(station.program_ring, station.sample_rate, station.channels,
                                       burst_seconds=config.burst_seconds,
                                       max_lag_seconds=config.max_lag_seconds)
        self.publisher = StatusPublisher(station, self.broadcaster)
        self.controller = Controller(station, auth)
        self.title = station.now_playing()  # the prompt(s) heard now: stream titles
        self.icecast_sources = [IcecastSource(parse_icecast_url(url), self.broadcaster, lambda: self.title)
                                for url in icecast_urls]
        self.loop: tp.Optional[asyncio.AbstractEventLoop] = None
        station.add_heard_listener(self._on_heard)
        for worker in self.broadcaster.workers:
            station.add_output(f"encoder {worker.codec.name}", worker.health)
        for source in self.icecast_sources:
            station.add_output(f"icecast {source.target}", source.health)
        self.web = RadioWeb(station, self.broadcaster, self.publisher, self.controller,
                            now_playing=lambda: self.title, origins=OriginPolicy(config.allow_origins),
                            limits=limits, control_rate=control_rate(config))
        self._tasks: tp.List[asyncio.Future] = []

    def start(self) -> None:
        """On the network loop: the encoders, the status publisher, the Icecast sources."""
        self.loop = asyncio.get_running_loop()
        self.broadcaster.start()
        self._tasks = [asyncio.ensure_future(self.publisher.run())]
        self._tasks += [asyncio.ensure_future(source.run()) for source in self.icecast_sources]

    async def stop(self, reason: str = "the station is shutting down") -> None:
        for task in self._tasks:
            task.cancel()
        await self.broadcaster.stop(reason)

    def _on_heard(self, change, program_sample: int) -> None:
        """A change is heard (the station's supervisor thread): new stream titles."""
        title = self.station.now_playing()
        if title != self.title:
            self.title = title
            if self.loop is not None:
                for source in self.icecast_sources:
                    self.loop.call_soon_threadsafe(source.title_changed)


class NetworkThread(threading.Thread):
    """Runs the asyncio loop of the network side on one port: one station's routes at `/`, or
    several stations' under `/s/NAME/` with the lineup at `/` (lineup.py)."""

    def __init__(self, stations: tp.Mapping[str, tp.Any], config: NetworkConfig,
                 icecast_urls: tp.Optional[tp.Mapping[str, tp.Sequence[str]]] = None,
                 lineup_control: tp.Optional[LineupControl] = None):
        """`stations`: name → Station ({"": station} for the single station at `/`);
        `icecast_urls`: name → its mounts (default: the --icecast flags, for a single station);
        `lineup_control`: what adds and removes stations of a lineup (lineup.py)."""
        super().__init__(name="network", daemon=True)
        self.config = config
        self.host = config.host
        self.port = config.port  # the port actually bound, once `ready`
        self.auth = ControlAuth(config.host, config.control_token)
        self.limits = ListenerLimits(config.max_listeners, config.max_listeners_per_ip)
        icecast_urls = icecast_urls or {name: config.icecast_urls for name in stations}
        self.services = {name: StationService(station, config, self.auth, self.limits, icecast_urls.get(name, ()))
                         for name, station in stations.items()}
        self.lineup_control = lineup_control
        self.lineup = len(self.services) != 1 or "" not in self.services
        self.ready = threading.Event()
        self.error: tp.Optional[BaseException] = None
        self.loop: tp.Optional[asyncio.AbstractEventLoop] = None
        self._stop_requested: tp.Optional[asyncio.Event] = None

    def add_station(self, name: str, station, icecast_urls: tp.Sequence[str] = ()) -> None:
        """From another thread: serve `station` under /s/NAME/ from now on."""
        asyncio.run_coroutine_threadsafe(self._add(name, station, icecast_urls), self.loop).result(30)

    async def _add(self, name: str, station, icecast_urls: tp.Sequence[str]) -> None:
        service = StationService(station, self.config, self.auth, self.limits, icecast_urls)
        service.start()
        self.services[name] = service

    def remove_station(self, name: str) -> None:
        """From another thread: stop serving station NAME; its listeners are told why."""
        asyncio.run_coroutine_threadsafe(self._remove(name), self.loop).result(30)

    async def _remove(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None:
            await service.stop("the station was removed")

    @property
    def single(self) -> tp.Optional[StationService]:
        """The one station served at `/`, if that is how this runs."""
        return None if self.lineup else self.services[""]

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self.error = err
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        config = self.config
        for service in self.services.values():
            service.start()
        app = (self.single.web.app() if self.single is not None
               else LineupWeb(self.services, self.auth, self.lineup_control, origins=OriginPolicy(config.allow_origins),
                              control_rate=control_rate(config)).app())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
        await runner.setup()
        # The web server's protocol, each connection behind a deadline for its first request.
        server = await self.loop.create_server(
            lambda: FirstRequestDeadline(runner.server(), config.handshake_timeout_seconds, self._handshake_timed_out),
            self.host, self.port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        if self.single is not None:
            log.info("network: listening on http://%s:%d/ (page), ws://%s:%d/ws, /stream.opus, "
                     "/stream.mp3, /status, /control", self.host, self.port, self.host, self.port)
        else:
            log.info("network: listening on http://%s:%d/ (the lineup); each station at /s/NAME/ (page), "
                     "/s/NAME/ws, /s/NAME/stream.opus, .mp3, /status, /control: %s", self.host, self.port,
                     ", ".join(self.services))
        self._announce_control()
        self.ready.set()
        await self._stop_requested.wait()
        for service in list(self.services.values()):
            await service.stop()
        server.close()
        await runner.cleanup()

    def _handshake_timed_out(self) -> None:
        log.info("network: cut a connection that sent no complete request within %g s",
                 self.config.handshake_timeout_seconds)

    def _announce_control(self) -> None:
        """Say how control works; a generated token is printed once, with the page URL (to the
        terminal, not through the log: it is a secret)."""
        if not self.auth.enabled:
            log.warning("control: off - serving %s without --control-token, so the station is "
                        "listen-only; give --control-token TOKEN to steer it", self.host)
        elif self.auth.generated:
            log.info("control: a token was generated for this run (--control-token sets your own)")
            host = f"[{self.host}]" if ":" in self.host else self.host
            print(f"\n    Steer the station at http://{host}:{self.port}/?token={self.auth.token}\n",
                  file=sys.stderr, flush=True)
        else:
            log.info("control: on, with the token given by --control-token")

    def stop(self) -> None:
        if self.loop is not None and self._stop_requested is not None:
            self.loop.call_soon_threadsafe(self._stop_requested.set)
        self.join(timeout=10)


def start_network(stations: tp.Mapping[str, tp.Any], config: NetworkConfig, timeout_seconds: float = 30.0,
                  icecast_urls: tp.Optional[tp.Mapping[str, tp.Sequence[str]]] = None,
                  lineup_control: tp.Optional[LineupControl] = None) -> tp.Optional[NetworkThread]:
    """Start the network side of `stations` (NetworkThread); None (logged, with what to do)
    when it cannot serve, e.g. the port is taken."""
    network = NetworkThread(stations, config, icecast_urls, lineup_control)
    network.start()
    network.ready.wait(timeout_seconds)
    if network.error is not None:
        log.error("cannot serve on %s:%d: %s; pick another --port (0: any free port)",
                  config.host, config.port, network.error)
        return None
    return network
