"""The network side's configuration record (`--host`, `--port`, `--burst`, `--max-lag`,
`--icecast`, `--no-network`, `--control-token`, `--allow-origin`, `--max-listeners`,
`--max-listeners-per-ip`, `--handshake-timeout`) and its validation."""
from __future__ import annotations

import dataclasses
import typing as tp
import urllib.parse

from ..station.config import ConfigError
from .icecast import IcecastTarget, parse_icecast_url

#: The most audio a new listener may be sent at once.
MAX_BURST_SECONDS = 10.0


@dataclasses.dataclass
class NetworkConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (logged)
    burst_seconds: float = 2.0  # audio a new listener gets at once
    max_lag_seconds: float = 10.0  # a listener this far behind the live point is dropped
    icecast_urls: tp.Tuple[str, ...] = ()  # icecast://source:PASSWORD@HOST:PORT/mount.opus|.mp3
    # Control needs this token; None: generated on loopback, control off elsewhere (net/control.py).
    control_token: tp.Optional[str] = None
    allow_origins: tp.Tuple[str, ...] = ()  # browser pages of other origins allowed on /ws and /control
    max_listeners: int = 1000  # listeners at once (0: no cap); the next is told the station is full
    max_listeners_per_ip: int = 100  # from one address (0: no cap)
    handshake_timeout_seconds: float = 10.0  # a connection's first request headers must arrive by then
    control_per_second: float = 5.0  # control commands per client address, on average (bursts of 4×)

    def icecast_targets(self) -> tp.List[IcecastTarget]:
        """The parsed --icecast URLs (IcecastUrlError names a malformed one)."""
        return [parse_icecast_url(url) for url in self.icecast_urls]

    def validate(self) -> None:
        """Raise ConfigError (or IcecastUrlError) for a setting the network side cannot honour."""
        if not 0 <= self.burst_seconds <= MAX_BURST_SECONDS:
            raise ConfigError(f"--burst must be between 0 and {MAX_BURST_SECONDS:g} seconds "
                              f"(got {self.burst_seconds:g})")
        if self.max_lag_seconds <= self.burst_seconds:
            raise ConfigError(f"--max-lag ({self.max_lag_seconds:g} s) must be longer than --burst "
                              f"({self.burst_seconds:g} s)")
        targets = self.icecast_targets()
        if targets and not self.enabled:
            raise ConfigError("--icecast needs the network side: drop --no-network")
        if self.control_token is not None and len(self.control_token) < 8:
            raise ConfigError("--control-token must be at least 8 characters")
        if self.max_listeners < 0 or self.max_listeners_per_ip < 0:
            raise ConfigError("--max-listeners and --max-listeners-per-ip must be 0 (no cap) or more")
        if not 0 < self.control_per_second <= 10_000:
            raise ConfigError(f"--control-rate must be above 0 (got {self.control_per_second:g})")
        if not 0 < self.handshake_timeout_seconds <= 300:
            raise ConfigError(f"--handshake-timeout must be between 0 and 300 seconds "
                              f"(got {self.handshake_timeout_seconds:g})")
        for origin in self.allow_origins:
            parts = urllib.parse.urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/")):
                raise ConfigError(f"--allow-origin {origin!r}: give an origin such as https://example.org "
                                  f"(scheme, host and port, no path) or *")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535 (got {self.port})")
