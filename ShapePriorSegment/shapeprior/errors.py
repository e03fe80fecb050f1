"""The one error type for bad user input."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad input: rendered by the command line as one line, exit code 2.

    ``str(err)`` is ``"<path>: <problem>"`` so the user sees which file is wrong.
    """

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
