"""Control commands (the same over `POST /control` and the WebSocket): parsed, authorised,
queued for the producer, answered with a JSON result or a clear error that changes nothing.

    {"type": "set_prompt", "prompt": "...", "morph_seconds": 8, "when": "now" | "next", "id": 7}
    {"type": "set_prompts", "prompts": [{"text": "...", "weight": 2}, ...], "morph_seconds": 8}
    {"type": "set_params", "temperature": 0.9, "top_k": 200, "top_p": 0.0, "cfg": 3.5}
    {"type": "new_piece", "when": "next"}
    {"type": "status"}

`when` defaults to "now" while generation runs faster than real time, else "next".
"""
from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import math
import secrets
import typing as tp

from ..station.config import COMMAND_NAMES, ConfigError, validate_sampling
from ..station.prompts import PromptError, morph_seconds, number, prompt_text, weighted_prompts
from ..station.steering import WHEN_CHOICES, Change

log = logging.getLogger(__name__)

#: Command type → the fields it accepts (besides "type", "id" and "token").
COMMAND_FIELDS = {
    "set_prompt": {"prompt", "when", "morph_seconds"},
    "set_prompts": {"prompts", "when", "morph_seconds"},
    "set_params": {"temperature", "top_k", "top_p", "cfg", "when"},
    "new_piece": {"when"},
    "status": set(),
}
#: Control command field → SamplingParams field.
SAMPLING_FIELDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg": "cfg_coef"}


class ControlError(ValueError):
    """A command that cannot be carried out; the message says why. Nothing was changed."""

    def __init__(self, message: str, http_status: int = 400):
        super().__init__(message)
        self.http_status = http_status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlAuth:
    """Who may steer: anyone with the token. `--control-token` sets it; on a loopback address
    without it a token is generated (`generated`, printed once with the page URL); on any other
    address without it control is off and the station is listen-only."""

    def __init__(self, host: str, token: tp.Optional[str]):
        self.generated = token is None and is_loopback(host)
        # (hex: a generated token never starts with "-", which a command line would take for a flag)
        self.token = secrets.token_hex(16) if self.generated else token
        self.host = host

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def check(self, offered: tp.Optional[str]) -> None:
        if not self.enabled:
            raise ControlError(f"control is off: this station serves {self.host} without --control-token, "
                               f"so it is listen-only; restart it with --control-token TOKEN", 403)
        if not offered or not hmac.compare_digest(offered.encode(), self.token.encode()):
            raise ControlError("control needs the station's token: add ?token=TOKEN (the page URL "
                               "printed at start) or the header 'Authorization: Bearer TOKEN'", 401)


def echo_id(message: tp.Any) -> tp.Union[str, int, float, None]:
    """A command's "id", echoed in its answer when it is a plain JSON value (a text of at most
    100 characters, an integer or a finite number); else None."""
    value = message.get("id") if isinstance(message, dict) else None
    if isinstance(value, str) and len(value) <= 100:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _number(message: dict, name: str, kind: type) -> tp.Optional[float]:
    if name not in message:
        return None
    try:
        return number(message[name], name, integer=kind is int)
    except PromptError as err:
        raise ControlError(str(err)) from err


def parse_command(message: tp.Any, current_sampling, default_when: str) -> tp.Optional[Change]:
    """A command message → the Change it asks for (None for "status"). Raises ControlError."""
    if not isinstance(message, dict):
        raise ControlError('a command is a JSON object such as {"type": "set_prompt", "prompt": "..."}')
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in COMMAND_FIELDS:
        raise ControlError(f"unknown command {str(kind)[:40]!r}: use one of {', '.join(COMMAND_FIELDS)}")
    unknown = set(message) - COMMAND_FIELDS[kind] - {"type", "id", "token"}
    if unknown:
        raise ControlError(f"{kind} does not take {', '.join(sorted(unknown))}; it takes "
                           f"{', '.join(sorted(COMMAND_FIELDS[kind])) or 'nothing else'}")
    if kind == "status":
        return None
    when = message.get("when", default_when)
    if when not in WHEN_CHOICES:
        raise ControlError(f"when must be \"now\" or \"next\" (got {when!r})")
    try:
        morph = morph_seconds(message.get("morph_seconds", 0.0))
        if kind == "set_prompt":
            return Change(prompts=((prompt_text(message.get("prompt")), 1.0),), morph_seconds=morph, when=when)
        if kind == "set_prompts":
            return Change(prompts=weighted_prompts(message.get("prompts")), morph_seconds=morph, when=when)
    except PromptError as err:
        raise ControlError(str(err)) from err
    if kind == "new_piece":
        return Change(new_piece=True, when=when)
    values = {name: _number(message, name, int if name == "top_k" else float) for name in SAMPLING_FIELDS}
    changes = {SAMPLING_FIELDS[name]: value for name, value in values.items() if value is not None}
    if not changes:
        raise ControlError(f"set_params needs at least one of {', '.join(SAMPLING_FIELDS)}")
    merged = {name: values[name] if values[name] is not None else getattr(current_sampling, field)
              for name, field in SAMPLING_FIELDS.items()}
    try:
        validate_sampling(merged["temperature"], merged["top_k"], merged["top_p"], merged["cfg"], COMMAND_NAMES)
    except ConfigError as err:
        raise ControlError(str(err)) from err
    return Change(sampling=changes, when=when)


class Controller:
    """Carries out commands for one station (on the network loop: it only queues changes for
    the producer and reads the status, so it never waits on generation)."""

    def __init__(self, station, auth: ControlAuth):
        self.station = station
        self.auth = auth
        self.counts: tp.Counter[tp.Tuple[str, str]] = collections.Counter()  # (command, ok|refused)

    def handle(self, message: tp.Any, token: tp.Optional[str]) -> dict:
        """The JSON result of one command, or {"type": "error", ...}; echoes its "id"."""
        command_id = echo_id(message)
        try:
            offered = token or (message.get("token") if isinstance(message, dict) else None)
            self.auth.check(offered if isinstance(offered, str) else None)
            station = self.station
            rtf = station.metrics.last_real_time_factor
            default_when = "now" if rtf is not None and rtf >= 1.0 else "next"
            change = parse_command(message, station.steering.latest.sampling, default_when)
        except ControlError as err:
            kind = message.get("type") if isinstance(message, dict) else None
            kind = kind if isinstance(kind, str) and kind in COMMAND_FIELDS else None
            log.info("control: refused %s: %s", kind or "a command", err)
            self.counts[(kind or "unknown", "refused")] += 1
            return {"type": "error", "id": command_id, "error": str(err), "http_status": err.http_status}
        self.counts[(message["type"], "ok")] += 1
        result = {"type": "result", "id": command_id, "command": message["type"], "ok": True}
        if change is not None:
            station.steering.submit(change)
            log.info("control: %s accepted (change %d, %s)", message["type"], change.number, change.when)
            result.update(change=change.number, when=change.when)
        result["status"] = station.control_status()
        return result
