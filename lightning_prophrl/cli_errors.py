"""One-line errors for the command-line entry points (``prophrl``, ``prophrl demo``, ``prophrl-data``).

A user error (a missing file, a bad value or flag, a wrong config key, a ``ValueError`` / ``OSError`` / ``KeyError``
raised by the library's validation) is printed as one line, ``error: ...``, on stderr and the command exits with
status 2 (a command-line mistake) or 1 (anything else). The full traceback is shown only with ``--debug`` on the
command line or ``PROPHRL_DEBUG=1`` in the environment. Any other exception (a bug) keeps its traceback.

* ``run_user_command(fn, argv, prog)`` runs ``fn(args)`` under these rules; ``user_command(prog)`` is the same as a
  decorator of a ``main(argv=None)`` function. Nested commands (``prophrl demo`` inside ``prophrl``) are handled
  once, by the outermost.
* ``ArgumentParser`` is ``argparse.ArgumentParser`` without abbreviated options whose usage errors raise
  ``UsageError`` (reported in one line) instead of printing the whole usage and exiting.
* ``describe(err)`` is the one-line text of an exception; wrappers added by jsonargparse around the real error (the
  union-type report with a dump of the config) are looked through.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import difflib
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

DEBUG_FLAG = "--debug"
DEBUG_ENV = "PROPHRL_DEBUG"
DEBUG_HELP = f"show the full traceback of an error (or set {DEBUG_ENV}=1)"
EXIT_USAGE = 2  # a command-line mistake: unknown flag, bad value
EXIT_ERROR = 1  # a user error found while running: missing file, invalid data

_active: contextvars.ContextVar[bool] = contextvars.ContextVar("prophrl_user_command", default=False)
T = TypeVar("T")


class UsageError(Exception):
    """A command-line mistake (unknown or abbreviated flag, bad value, missing argument).

    Args:
        message: what is wrong, naming the flag.
        prog: the command whose ``--help`` lists the accepted options.
    """

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.message, self.prog = message, prog

    def __str__(self) -> str:
        hint = f"; see `{self.prog} --help`" if self.prog else ""
        return f"{self.prog + ': ' if self.prog else ''}{self.message}{hint}"


# Reported in one line (jsonargparse's ArgumentError is argparse's; MissingKeyError is a KeyError; FileNotFoundError,
# FileExistsError and PermissionError are OSErrors; ShardFormatError is a ValueError).
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, argparse.ArgumentError, OSError, ValueError, KeyError)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` (``--episode`` is not taken for ``--episodes``) whose
    errors raise ``UsageError``. Subparsers made by ``add_subparsers`` are of the same kind and report an unknown
    option themselves, so the message names the subcommand's ``--help`` and the closest option it accepts."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self._is_subparser = False

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)

    def add_subparsers(self, **kwargs: Any):
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_subparser(*args: Any, **kw: Any) -> ArgumentParser:
            parser = add_parser(*args, **kw)
            parser._is_subparser = True
            return parser

        action.add_parser = add_subparser
        return action

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if extras and self._is_subparser:  # the top level reports the extras of a subcommand without naming it
            self.error(self.unrecognized(extras))
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return ns

    def unrecognized(self, extras: Sequence[str]) -> str:
        """``unrecognized arguments: ...`` with the closest accepted option of an unknown ``--flag``."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        flags = [e.split("=", 1)[0] for e in extras if e.startswith("-")]
        close = [m for f in flags for m in difflib.get_close_matches(f, list(self._option_string_actions), n=1)]
        return message + (f" (did you mean {close[0]}? options are never abbreviated)" if close else "")


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """True when ``--debug`` is in ``argv`` or ``PROPHRL_DEBUG`` is set to a true value (not ``""``, ``0``, ``false``,
    ``no``)."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no", "off")


def _raised_in_jsonargparse(err: BaseException) -> bool:
    """True for an exception raised by jsonargparse code (its messages span several lines)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}jsonargparse{os.sep}" in tb.tb_frame.f_code.co_filename


_NOISE = (
    "Given value",
    "Subtypes:",
    "Errors:",
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
)


def _compact(text: str) -> str:
    """The meaningful lines of a jsonargparse message joined into one: indentation, list bullets and the lines that
    dump types and values are dropped."""
    parts = []
    for line in str(text).splitlines():
        line = line.strip().lstrip("- ").strip()
        if line and not line.startswith(_NOISE):
            line = re.sub(r"<class '([\w.]+)'>", r"\1", line.rstrip(":"))
            parts.append(re.sub(r"^Expected an? (typing\.)?", "expected ", line))
    return ": ".join(parts)


def describe(err: BaseException) -> str:
    """One line naming what went wrong (the file, key or flag) for a user error."""
    while not isinstance(err, argparse.ArgumentError) and err.__cause__ is not None and _raised_in_jsonargparse(err):
        err = err.__cause__  # jsonargparse's report around the real error (e.g. a model's __init__ failing)
    from_parser = isinstance(err, argparse.ArgumentError) or _raised_in_jsonargparse(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError) and type(err).__str__ is KeyError.__str__ and len(err.args) == 1:
        key = err.args[0]
        return key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    text = str(err)
    line = _compact(text) if from_parser else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or type(err).__name__


def _close_progress_bars() -> None:
    """Close the tqdm bars the failed command left open, so that the error starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):  # a bar that cannot be closed only costs a line break
            bar.close()


def run_user_command(fn: Callable[[list[str]], T], argv: Sequence[str] | None = None, prog: str = "prophrl") -> T:
    """Run ``fn(args)`` and report a user error in one line on stderr, then exit non-zero.

    Args:
        fn: the command; receives the arguments without ``--debug``.
        argv: the arguments; None reads ``sys.argv[1:]`` (and removes ``--debug`` from ``sys.argv`` too, for code
            that reads it itself, such as LightningCLI).
        prog: the command's name, in the messages.

    Returns:
        What ``fn`` returns.

    Raises:
        SystemExit: status 2 for a ``UsageError`` / ``argparse.ArgumentError``, 1 for other user errors; with
            ``--debug`` or ``PROPHRL_DEBUG=1`` the original exception is raised instead. Other exceptions pass
            through unchanged.
    """
    if argv is None:
        args = sys.argv[1:]
        if DEBUG_FLAG in args:
            sys.argv[1:] = [a for a in args if a != DEBUG_FLAG]
    else:
        args = list(argv)
    debug = debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    if _active.get():  # an outer command reports the error
        return fn(args)
    token = _active.set(True)
    try:
        return fn(args)
    except USER_ERRORS as err:
        if debug:
            raise
        usage = isinstance(err, UsageError | argparse.ArgumentError)
        text = str(err) if isinstance(err, UsageError) else describe(err)
        if isinstance(err, argparse.ArgumentError):  # jsonargparse (LightningCLI)
            never = " (options are never abbreviated)" if text.startswith("unrecognized arguments") else ""
            text = f"{text}{never}; see `{prog} --help`"
        _close_progress_bars()
        print(f"error: {text}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE if usage else EXIT_ERROR) from None
    finally:
        _active.reset(token)


def user_command(prog: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of ``run_user_command`` for a ``main(argv: list[str] | None = None)`` entry point."""

    def wrap(main: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> T:
            return run_user_command(main, argv, prog)

        return wrapped

    return wrap


def require_path(path: str | Path, what: str, *, kind: str = "any", hint: str = "") -> Path:
    """Check that ``path`` exists (``kind``: ``"file"``, ``"dir"`` or ``"any"``) before anything is written.

    Raises:
        FileNotFoundError: ``<what>: <path> not found`` (or is not a file / directory), then ``hint``.
    """
    p = Path(path)
    ok = {"file": p.is_file, "dir": p.is_dir, "any": p.exists}[kind]()
    if not ok:
        problem = "not found" if not p.exists() else f"is not a {'file' if kind == 'file' else 'directory'}"
        raise FileNotFoundError(f"{what}: {p} {problem}{'; ' + hint if hint else ''}")
    return p
