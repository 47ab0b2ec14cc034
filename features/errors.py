"""Errors that mean "the user's input is wrong": the CLI prints one line and exits with code 2."""

from __future__ import annotations

import difflib


class InputError(ValueError):
    """Bad input from a user: unknown name, invalid layout, malformed file. Never a bug in layoutcast."""


class UnknownNameError(InputError):
    """A model, GPU or workload name that no catalog entry matches; carries the closest names."""

    def __init__(self, what: str, name: str, known: list[str]):
        self.what, self.name = what, name
        self.suggestions = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(self.suggestions)}?)" if self.suggestions else ""
        super().__init__(f"unknown {what} {name!r}{hint}")


class InfeasibleError(InputError):
    """A layout that cannot run: does not divide heads/layers/experts, or does not fit in memory."""
