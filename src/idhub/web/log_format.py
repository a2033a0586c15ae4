"""`log_format = "json"`: one JSON object a line for every record idhub and uvicorn write.

Fields: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and the structured fields a
record carries (the access record's request id, route, status, latency, client id). Secrets
never belong in a log line; as the audit trail does, this formatter is the last defence and
replaces anything shaped like a JWT or a private key before the line is written.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from idhub.core.audit import REDACTED, SECRET_SHAPE

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                plain = isinstance(value, str | int | float | bool | None)
                out[key] = value if plain else str(value)
        if record.exc_info:
            # The exception's type and message, not the frames (they may hold request data).
            exc = record.exc_info[1]
            out["error"] = f"{type(exc).__name__}: {exc}" if exc is not None else "error"
        line = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
        return SECRET_SHAPE.sub(REDACTED, line)


def json_logging_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging config turned to JSON: every handler uses `JsonFormatter`, the root
    logger (idhub's own records) writes through it, and uvicorn's access line, which knows
    neither route nor latency nor client, gives way to idhub's `idhub.access` record."""
    config = dict(base)
    config["formatters"] = {"json": {"()": f"{__name__}.JsonFormatter"}}
    for handler in config["handlers"].values():
        handler["formatter"] = "json"
    config["root"] = {"handlers": ["default"], "level": "INFO"}
    config["loggers"]["idhub.access"] = {
        "handlers": ["access"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def json_line(logger: str, message: str) -> str:
    """One INFO line in the JSON format, for output written before logging is set up."""
    record = logging.makeLogRecord({"name": logger, "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": message})  # fmt: skip
    return JsonFormatter().format(record)
