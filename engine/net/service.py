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
        self.title = station.now_playing()  # the prompt(s) heard now: stream titles
        self.icecast_sources = [IcecastSource(target, self.broadcaster, lambda: self.title)
                                for target in config.icecast_targets()]
        station.add_heard_listener(self._on_heard)
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
        app = RadioWeb(self.station, self.broadcaster, self.publisher, self.controller,
                       now_playing=lambda: self.title).app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
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
        await runner.cleanup()

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
