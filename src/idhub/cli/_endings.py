"""How a command ends when something fails: one line on stderr and an exit code, whatever was
raised. The entry point (`cli/__init__.py`) hands every exception here, so no command needs
its own `try`; the one exception shown in full is the unexpected one under `-v`.

Exit codes: 0 done; 1 a check the command ran found a problem (policy test, audit verify);
2 the command could not do its job (bad input, settings, database, files); 130 Ctrl-C;
141 standard output was closed by its reader (`idhub policy test | head`), as a shell reports
a process ended by SIGPIPE; nothing is printed then, the reader asked for no more.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass

from idhub.errors import IdhubError, SchemaNotReady, StorageError, StorageUnavailable

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


@dataclass(frozen=True)
class Ending:
    code: int
    line: str | None  # printed to stderr after "idhub: ", None for nothing


def ending_for(exc: BaseException, *, database: str | None = None, verbose: bool = False) -> Ending:
    """The line and exit code for an exception that left a command. `database` (the URL,
    password masked) is named in storage errors, the one thing the admin must check then."""
    if isinstance(exc, KeyboardInterrupt):
        return Ending(EXIT_INTERRUPTED, "interrupted")
    if isinstance(exc, BrokenPipeError):
        return Ending(EXIT_BROKEN_PIPE, None)
    known = exc if isinstance(exc, IdhubError) else _translated(exc)
    if known is not None:
        text, storage = _describe(known)
        if storage and database:
            text = f"{text} (database {database})"
        return Ending(EXIT_ERROR, f"error: {text}")
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return Ending(EXIT_ERROR, f"error: {where}{exc.strerror}")
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if verbose else "; run with -v to see where"
    return Ending(EXIT_ERROR, f"error: unexpected {type(exc).__name__}: {exc}{hint}")


def _describe(known: IdhubError) -> tuple[str, bool]:
    """One line for an idhub error, and whether the database is what failed. An adapter that
    wrapped a database failure in its own words ("the audit log cannot be read") keeps them,
    followed by what the failure means to an admin (not initialised, not reachable) instead of
    the driver's multi-line text."""
    storage = isinstance(known, StorageError)
    text = str(known)
    cause = known.__cause__
    meaning = _translated(cause) if cause is not None else None
    plain = isinstance(meaning, StorageUnavailable | SchemaNotReady)
    if plain and type(meaning) is not type(known):
        # Adapters word these as "cannot read the directory: {driver error}"; the driver's part
        # is what `meaning` says in an admin's words.
        own = known.message.replace(str(cause), "").strip().rstrip(":").strip()
        text, storage = (f"{own}: {meaning}" if own else str(meaning)), True
    return text.strip().splitlines()[0] if text.strip() else type(known).__name__, storage


def _translated(exc: BaseException) -> IdhubError | None:
    from idhub.bootstrap import translate_failure

    return translate_failure(exc)


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's last flush of what
    is still buffered does not fail again at exit (and print "Exception ignored")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a real file (tests capture into memory): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
