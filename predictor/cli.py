"""The `layoutcast` command line: one sub-command per module under `predictor.commands`.

Every sub-command module has `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Bad input (features.InputError) is one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from features.errors import InputError

COMMAND_MODULES = [
    "predictor.commands.predict",
    "predictor.commands.search",
    "predictor.commands.train",
    "predictor.commands.evaluate",
    "predictor.commands.import_data",
    "predictor.commands.data",
    "predictor.commands.collect",
    "predictor.commands.campaign",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str):  # noqa: D102
        sys.stderr.write(f"layoutcast: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="layoutcast", description="Predict LLM serving performance per parallel layout; search layouts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        sys.stderr.write(f"layoutcast: error: {e}\n")
        return 2
    except FileNotFoundError as e:
        sys.stderr.write(f"layoutcast: error: no such file: {e.filename or e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("layoutcast: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
