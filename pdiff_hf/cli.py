"""The ``pdiff-hf`` command line.

Each subcommand lives in ``pdiff_hf/commands/<name>.py`` and exposes ``register(subparsers)``, which adds an
``argparse`` sub-parser whose ``func(args) -> int`` runs it. Command modules import torch, diffusers, datasets only
inside their run functions, so ``pdiff-hf --help`` answers without loading them. Bad input ends with a one-line
error and exit code 2, never a traceback.
"""

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import CLIError, PDiffError  # noqa: F401  (CLIError: raised by the commands, re-exported here)

COMMANDS = ("demo", "evaluate", "push")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdiff-hf", description="Neural Network Diffusion (p-diff) on Hugging Face")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pdiff_hf.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"pdiff_hf.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def dashed_flags(argv: List[str]) -> List[str]:
    """The training scripts spell flags with underscores (``--output_dir``), ``pdiff-hf`` with dashes
    (``--output-dir``): accept both by rewriting ``--a_b`` and ``--a_b=value`` to dashes. Values are left alone."""
    out = []
    for token in argv:
        if token == "--":
            out.extend(argv[len(out) :])
            break
        if token.startswith("--") and "_" in token.split("=", 1)[0]:
            flag, sep, value = token.partition("=")
            token = flag.replace("_", "-") + sep + value
        out.append(token)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(dashed_flags(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .hub.secrets import install_log_redaction  # after parsing: --help stays free of heavy imports

    install_log_redaction()  # no token (hf_…, --hub_token VALUE) in any log line of a command
    try:
        return int(args.func(args) or 0)
    except (PDiffError, FileNotFoundError, NotADirectoryError) as err:
        print(f"pdiff-hf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pdiff-hf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
