"""The ``shapeprior`` command line.

Every bad input or option ends with one line ``shapeprior: error: <file>: <problem>`` on stderr
and exit code 2; outputs are written atomically, so nothing half-made is left. Building the
parser imports no torch, VTK or ITK: errors and ``--help`` come at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import NoReturn, Sequence

from .. import __version__
from ..errors import InputError

# Set by Ctrl-C. A compiled extension interrupted while it is imported turns the KeyboardInterrupt into
# its own error (pybind11: "ImportError: std::bad_cast"), and optional imports swallow such errors, so
# the interrupt is remembered: any error after it, and the next progress update, end the command.
_interrupted = False


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (no usage block)."""

    def error(self, message: str) -> NoReturn:
        flag, _, problem = message.removeprefix("argument ").partition(": ")
        if problem.startswith("must "):  # our option types: "--level must be between 1 and 6, got 12"
            message = f"{flag} {problem}"
        print(f"shapeprior: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import benchmarks, fitting, serve, shapes, training

    parser = Parser(prog="shapeprior", description="Deep statistical shape priors for organ delineation.")
    parser.add_argument("--version", action="version", version=f"shapeprior {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    training.add(sub)
    fitting.add(sub)
    shapes.add(sub)
    benchmarks.add(sub)
    serve.add(sub)
    return parser


def _on_interrupt(signum: int, frame) -> None:
    global _interrupted
    _interrupted = True
    # Raised inside importlib's own code (a module lock's weakref callback) it would be printed as
    # "Exception ignored" and lost: there, only remember it; the next progress update ends the command.
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        return
    raise KeyboardInterrupt


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if what it interrupted swallowed it."""
    if _interrupted:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is \
            signal.default_int_handler:  # not where an embedding program handles Ctrl-C itself
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exit:  # argparse: --help, --version, a bad option (its line is printed)
        return exit.code if isinstance(exit.code, int) else 2
    except InputError as err:
        print(f"shapeprior: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        if not _interrupted:
            raise
        return _interrupted_exit(args)
    except KeyboardInterrupt:
        return _interrupted_exit(args)


def _interrupted_exit(args: argparse.Namespace | None) -> int:
    resume = "; re-run the same command to resume" if getattr(args, "resumable", False) else ""
    print(f"shapeprior: interrupted{resume}", file=sys.stderr)
    return 130
