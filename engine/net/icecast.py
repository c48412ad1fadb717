"""`--icecast icecast://source:PASSWORD@HOST:PORT/mount.opus` (or `.mp3`): push the station to an
Icecast server as a source. Icecast (and its relays) then do the fan-out to many listeners.

The source is a listener of the broadcaster like any other (the same encoded bytes), sending with
an HTTP PUT (Icecast ≥ 2.4). When the server goes away or refuses, it retries with backoff and
says so in the log.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import typing as tp
import urllib.parse

from .broadcast import Broadcaster
from .icy import header_safe
from .redact import mask_urls

log = logging.getLogger(__name__)


class IcecastUrlError(ValueError):
    """The --icecast URL is malformed; the message says how it should look."""


@dataclasses.dataclass(frozen=True)
class IcecastTarget:
    host: str
    port: int
    mount: str
    user: str
    password: str
    ring_key: str  # "ogg" or "mp3"
    content_type: str

    def __str__(self) -> str:
        """The URL without its password (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"icecast://{self.user}@{host}:{self.port}{self.mount}"

    @property
    def host_header(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_icecast_url(url: str) -> IcecastTarget:
    usage = "use icecast://source:PASSWORD@HOST:PORT/mount.opus (or .mp3)"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "icecast" or not parts.hostname or not parts.path or parts.path == "/":
        raise IcecastUrlError(f"--icecast {mask_urls(url)!r}: {usage}")
    if parts.password is None:
        raise IcecastUrlError(f"--icecast {mask_urls(url)!r}: the source password is missing; {usage}")
    if parts.path.endswith((".opus", ".ogg")):
        key, mime = "ogg", "audio/ogg"
    elif parts.path.endswith(".mp3"):
        key, mime = "mp3", "audio/mpeg"
    else:
        raise IcecastUrlError(f"--icecast {mask_urls(url)!r}: the mount must end in .opus, .ogg or .mp3")
    try:
        port = parts.port or 8000
    except ValueError as err:
        raise IcecastUrlError(f"--icecast {mask_urls(url)!r}: bad port; {usage}") from err
    return IcecastTarget(parts.hostname, port, parts.path, urllib.parse.unquote(parts.username or "source"),
                         urllib.parse.unquote(parts.password), key, mime)


class IcecastSource:
    """Pushes one mount; `run()` is a coroutine on the network loop that never gives up."""

    def __init__(self, target: IcecastTarget, broadcaster: Broadcaster, title: tp.Callable[[], str],
                 max_backoff_seconds: float = 30.0):
        self.target = target
        self.broadcaster = broadcaster
        self.title = title  # the prompt(s) heard now
        self.max_backoff_seconds = max_backoff_seconds
        self.connected = False
        self.connections = 0
        self.last_error: tp.Optional[str] = None  # why the last attempt failed (no secrets)
        self.retry_in_seconds: tp.Optional[float] = None

    def health(self) -> dict:
        """For /status: connected or retrying, and why."""
        return {"state": "connected" if self.connected else "retrying", "connections": self.connections,
                "error": None if self.connected else self.last_error,
                "retry_in_seconds": None if self.connected else self.retry_in_seconds}

    def title_changed(self) -> None:
        """The prompt heard changed (called on the loop): update an MP3 mount's title. (Ogg
        mounts carry their titles in the stream's own comments, which Icecast reads.)"""
        if self.connected and self.target.ring_key == "mp3":
            asyncio.ensure_future(self._send_title())

    async def _send_title(self) -> None:
        """Icecast's admin metadata update, with the source's credentials."""
        t = self.target
        query = urllib.parse.urlencode({"mount": t.mount, "mode": "updinfo", "song": " ".join(self.title().split())})
        auth = base64.b64encode(f"{t.user}:{t.password}".encode()).decode()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), timeout=10)
            try:
                writer.write(f"GET /admin/metadata?{query} HTTP/1.0\r\nHost: {t.host_header}\r\n"
                             f"Authorization: Basic {auth}\r\nUser-Agent: musicgen-radio\r\n\r\n".encode())
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), timeout=10)
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError) as err:
            log.warning("icecast %s: title not updated (%s)", t, err)
            return
        if status.split(b" ")[1:2] == [b"200"]:
            log.info("icecast %s: title updated", t)
        else:
            log.warning("icecast %s: title update refused: %s", t, status.decode(errors="replace").strip())

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._stream_once()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except IcecastRefused as err:  # the server answered no: say clearly what to fix
                self.last_error = err.reason
                log.error("icecast %s: %s; retrying in %.0f s", self.target, err.reason, backoff)
            except (OSError, ConnectionError, asyncio.TimeoutError) as err:
                reason = getattr(err, "reason", None) or str(err) or type(err).__name__
                self.last_error = reason
                log.warning("icecast %s: %s; retrying in %.0f s", self.target, reason, backoff)
            self.connected = False
            self.retry_in_seconds = backoff
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_seconds, backoff * 2)

    async def _stream_once(self) -> None:
        t = self.target
        reader, writer = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), timeout=10)
        listener = None
        try:
            auth = base64.b64encode(f"{t.user}:{t.password}".encode()).decode()
            request = (
                f"PUT {t.mount} HTTP/1.1\r\nHost: {t.host_header}\r\n"
                f"Authorization: Basic {auth}\r\nUser-Agent: musicgen-radio\r\n"
                f"Content-Type: {t.content_type}\r\nIce-Public: 0\r\nIce-Name: MusicGen radio\r\n"
                f"Ice-Description: {header_safe(self.title())}\r\nExpect: 100-continue\r\n\r\n")
            writer.write(request.encode())
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), timeout=10)
            code = status.split(b" ")[1:2]
            if code not in ([b"100"], [b"200"]):
                raise IcecastRefused(_refusal(code[0].decode(errors="replace") if code else "",
                                              status.decode(errors="replace").strip()))
            self.connected = True
            self.connections += 1
            log.info("icecast %s: connected, streaming %s", t, t.content_type)
            self.title_changed()
            listener = self.broadcaster.join("icecast", t.ring_key)
            listener.on_drop = lambda reason, code: writer.transport.abort()
            # The server hanging up is noticed at once, not at the next write.
            watcher = asyncio.ensure_future(_abort_on_eof(reader, writer))
            if t.ring_key == "ogg":
                writer.write(self.broadcaster.ogg_headers)

            async def send(packet):
                if reader.at_eof():
                    raise ConnectionError("the server closed the connection")
                writer.write(packet.payload)
                await writer.drain()

            await self.broadcaster.feed(listener, send)  # returns when dropped or disconnected
            raise ConnectionError(listener.dropped or "the connection to the server ended")
        finally:
            if listener is not None:
                self.broadcaster.leave(listener)
                watcher.cancel()
            writer.close()


async def _abort_on_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read (and drop) what the server sends; when it closes, cut our side so the send fails."""
    while await reader.read(4096):
        pass
    writer.transport.abort()


def _refusal(code: str, status_line: str) -> str:
    """What an Icecast refusal means for the user."""
    if code == "401":
        return "refused: wrong source user or password (HTTP 401); check USER:PASSWORD in the --icecast URL"
    if code == "403":
        return ("refused the mount (HTTP 403): another source is using it, the server's source limit is "
                "reached, or the mount is not allowed; check the mount name and the server's config")
    return f"refused: {status_line[:120] or 'no answer'}"


class IcecastRefused(ConnectionError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
