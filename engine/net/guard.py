"""What the station lets the network ask of it, as Icecast does: browsers' cross-site requests
(`--allow-origin`), listener caps overall and per address (`--max-listeners`,
`--max-listeners-per-ip`), a deadline for a connection's first request headers
(`--handshake-timeout`, Icecast's header-timeout) and a rate limit on control commands per client.
All of it runs on the network loop; nothing here waits."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import typing as tp
import urllib.parse

log = logging.getLogger(__name__)


class OriginPolicy:
    """Which browser pages may open the WebSocket and POST /control. A request without an
    Origin header is not from a browser page (curl, scripts, clients/) and is allowed; a page
    from this station itself is allowed; any other needs `--allow-origin` (or `*`)."""

    def __init__(self, allowed: tp.Sequence[str] = ()):
        self.any = "*" in allowed
        self.allowed = {origin.rstrip("/").lower() for origin in allowed if origin != "*"}

    def allows(self, headers: tp.Mapping[str, str]) -> bool:
        origin = headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if self.any or origin in self.allowed:
            return True
        return urllib.parse.urlsplit(origin).netloc == headers.get("Host", "").lower()

    def cors_headers(self, headers: tp.Mapping[str, str]) -> tp.Dict[str, str]:
        """CORS answer headers for an allowed cross-site origin (none otherwise)."""
        origin = headers.get("Origin")
        if origin is None or not self.allows(headers):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600"}


class ListenerLimits:
    """Listener caps: `max_total` connections overall and `max_per_address` from one address
    (0: no cap). `admit` says why a newcomer is refused, or None; `joined`/`left` count."""

    def __init__(self, max_total: int = 0, max_per_address: int = 0):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.per_address: tp.Counter[str] = collections.Counter()

    def admit(self, address: str) -> tp.Optional[str]:
        if self.max_per_address and self.per_address.get(address, 0) >= self.max_per_address:
            reason = f"too many listeners from your address (at most {self.max_per_address})"
        elif self.max_total and self.total >= self.max_total:
            reason = f"the station is full ({self.max_total} listeners); try again later"
        else:
            return None
        return reason

    def joined(self, address: str) -> None:
        self.total += 1
        self.per_address[address] += 1

    def left(self, address: str) -> None:
        self.total -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]


class RateLimiter:
    """A token bucket per client: `rate_per_second` on average, `burst` at once. Memory stays
    bounded: buckets that have refilled are forgotten."""

    def __init__(self, rate_per_second: float, burst: int, clock: tp.Callable[[], float] = time.monotonic):
        self.rate = float(rate_per_second)
        self.burst = float(burst)
        self.clock = clock
        self._buckets: tp.Dict[str, tp.Tuple[float, float]] = {}  # client → (tokens, at)

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return allowed

    def _forget_full(self, now: float) -> None:
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[client]


class FirstRequestDeadline(asyncio.Protocol):
    """Wraps the web server's protocol for one connection: when the first request's headers
    have not all arrived `timeout_seconds` after connecting, the connection is cut (a slow or
    idle handshake holds no socket). Everything else is passed through."""

    def __init__(self, inner: asyncio.Protocol, timeout_seconds: float, on_timeout: tp.Callable[[], None]):
        self.inner = inner
        self.timeout_seconds = timeout_seconds
        self.on_timeout = on_timeout
        self.transport: tp.Optional[asyncio.BaseTransport] = None
        self._tail = b""  # the last bytes seen, to find the end of the headers across reads
        self._timer: tp.Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.timeout_seconds, self._expire)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _expire(self) -> None:
        self._timer = None
        self.on_timeout()
        if self.transport is not None:
            self.transport.abort()
