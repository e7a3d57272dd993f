"""Structured logs: one JSON object per line on stderr, with the `extra` fields as keys."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[1] is not None:
            if record.levelno >= logging.ERROR:
                entry["exception"] = self.formatException(record.exc_info)
            else:
                # Warnings (a library retrying a connection, say) get the cause in one line,
                # not a stack trace per retry.
                error = record.exc_info[1]
                entry["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        return json.dumps(entry, default=str)


def setup_logging(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    ours = logging.getLogger("ocspd")
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    # Libraries (asyncpg, aiohttp) log through the root logger: the same JSON lines, warnings
    # and up. aiohttp's access log would add a line per request; ours is at debug.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return ours
