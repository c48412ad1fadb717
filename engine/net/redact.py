"""Secrets never reach a log or an error message: the control token and the passwords of
`--icecast` URLs are masked in every log record (message, arguments and traceback) and in any
text passed through `mask`, wherever they appear; so are URL passwords, `token=` query values
and bearer tokens in general."""
from __future__ import annotations

import logging
import re
import typing as tp

MASK = "***"
_PATTERNS = (
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^\s/]+(@)", re.IGNORECASE),  # scheme://user:PASSWORD@
    re.compile(r"([?&;]token=)[^&\s'\"<>]+", re.IGNORECASE),
    re.compile(r"(\bBearer\s+)[^\s'\"]+"),
    re.compile(r"(\bBasic\s+)[A-Za-z0-9+/=]{8,}"),
)


def mask_urls(text: str) -> str:
    """`text` with URL passwords, token= values and Authorization credentials masked."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(2) if m.lastindex and m.lastindex > 1 else ""), text)
    return text


class SecretRedactor(logging.Filter):
    """A logging filter (installed on the root logger's handlers) masking known secrets."""

    def __init__(self, secrets: tp.Iterable[tp.Optional[str]] = ()):
        super().__init__()
        self._secrets: tp.Set[str] = set()
        self._handlers: tp.List[logging.Handler] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: tp.Optional[str]) -> None:
        if secret and len(secret) >= 3:
            self._secrets.add(secret)

    def mask(self, text: str) -> str:
        text = mask_urls(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True

    def install(self) -> "SecretRedactor":
        """Mask what every handler of the root logger writes (until `uninstall`)."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
            self._handlers.append(handler)
        return self

    def uninstall(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers = []
