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
from .icecast import IcecastSource
from .status import StatusPublisher
from .webapp import RadioWeb

log = logging.getLogger(__name__)


class NetworkThread(threading.Thread):
    """Runs the asyncio loop of the network side for one station (`station.program_ring` is
    what it streams, `station.status()` what it reports)."""

    def __init__(self, station, config: NetworkConfig):
        super().__init__(name="network", daemon=True)
        self.station = station
        self.config = config
        self.host = config.host
        self.port = config.port  # the port actually bound, once `ready`
        self.broadcaster = Broadcaster(station.program_ring, station.sample_rate, station.channels,
                                       burst_seconds=config.burst_seconds,
                                       max_lag_seconds=config.max_lag_seconds)
        self.publisher = StatusPublisher(station, self.broadcaster)
        self.auth = ControlAuth(config.host, config.control_token)
        self.controller = Controller(station, self.auth)
        self.limits = ListenerLimits(config.max_listeners, config.max_listeners_per_ip)
        self.title = station.now_playing()  # the prompt(s) heard now: stream titles
        self.icecast_sources = [IcecastSource(target, self.broadcaster, lambda: self.title)
                                for target in config.icecast_targets()]
        station.add_heard_listener(self._on_heard)
        for worker in self.broadcaster.workers:
            station.add_output(f"encoder {worker.codec.name}", worker.health)
        for source in self.icecast_sources:
            station.add_output(f"icecast {source.target}", source.health)
        self.ready = threading.Event()
        self.error: tp.Optional[BaseException] = None
        self.loop: tp.Optional[asyncio.AbstractEventLoop] = None
        self._stop_requested: tp.Optional[asyncio.Event] = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self.error = err
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self.broadcaster.start()
        config = self.config
        app = RadioWeb(self.station, self.broadcaster, self.publisher, self.controller,
                       now_playing=lambda: self.title, origins=OriginPolicy(config.allow_origins),
                       limits=self.limits,
                       control_rate=RateLimiter(config.control_per_second, burst=max(1, round(4 * config.control_per_second)))).app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
        await runner.setup()
        # The web server's protocol, each connection behind a deadline for its first request.
        server = await self.loop.create_server(
            lambda: FirstRequestDeadline(runner.server(), config.handshake_timeout_seconds, self._handshake_timed_out),
            self.host, self.port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        tasks = [asyncio.ensure_future(self.publisher.run())]
        tasks += [asyncio.ensure_future(source.run()) for source in self.icecast_sources]
        log.info("network: listening on http://%s:%d/ (page), ws://%s:%d/ws, /stream.opus, "
                 "/stream.mp3, /status, /control", self.host, self.port, self.host, self.port)
        self._announce_control()
        self.ready.set()
        await self._stop_requested.wait()
        for task in tasks:
            task.cancel()
        await self.broadcaster.stop()
        server.close()
        await runner.cleanup()

    def _handshake_timed_out(self) -> None:
        log.info("network: cut a connection that sent no complete request within %g s",
                 self.config.handshake_timeout_seconds)

    def _on_heard(self, change, program_sample: int) -> None:
        """A change is heard (the station's supervisor thread): new stream titles."""
        title = self.station.now_playing()
        if title != self.title:
            self.title = title
            if self.loop is not None:
                for source in self.icecast_sources:
                    self.loop.call_soon_threadsafe(source.title_changed)

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


def start_network(station, config: NetworkConfig, timeout_seconds: float = 30.0) -> tp.Optional[NetworkThread]:
    """Start the network side; None (logged, with what to do) when it cannot serve, e.g. the
    port is taken."""
    network = NetworkThread(station, config)
    network.start()
    network.ready.wait(timeout_seconds)
    if network.error is not None:
        log.error("cannot serve on %s:%d: %s; pick another --port (0: any free port)",
                  config.host, config.port, network.error)
        return None
    return network
