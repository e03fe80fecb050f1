"""The ``shapeprior`` command line.

Every bad input or option ends with one line ``shapeprior: error: <file>: <problem>`` on stderr
and exit code 2; outputs are written atomically, so nothing half-made is left. Building the
parser imports no torch, VTK or ITK: errors and ``--help`` come at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from .. import __version__
from ..errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (no usage block)."""

    def error(self, message: str) -> NoReturn:
        flag, _, problem = message.removeprefix("argument ").partition(": ")
        if problem.startswith("must "):  # our option types: "--level must be between 1 and 6, got 12"
            message = f"{flag} {problem}"
        print(f"shapeprior: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import benchmarks, fitting, training

    parser = Parser(prog="shapeprior", description="Deep statistical shape priors for organ delineation.")
    parser.add_argument("--version", action="version", version=f"shapeprior {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    training.add(sub)
    fitting.add(sub)
    benchmarks.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exit:  # argparse: --help, --version, a bad option (its line is printed)
        return exit.code if isinstance(exit.code, int) else 2
    except InputError as err:
        print(f"shapeprior: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; re-run the same command to resume" if getattr(args, "resumable", False) else ""
        print(f"shapeprior: interrupted{resume}", file=sys.stderr)
        return 130
