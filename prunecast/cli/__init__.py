"""The ``prunecast`` command line: one subcommand per module in :data:`COMMANDS`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a handler taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys

from prunecast.cli import (
    bench,
    build_engine,
    evaluate,
    export,
    export_triton,
    finetune,
    forecast,
    prune,
    run,
    serve,
)

COMMANDS = (run, evaluate, prune, finetune, export, build_engine, export_triton, bench, serve, forecast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunecast",
        description="Prune-then-finetune time-series foundation models into fast forecasters.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        # Our own errors (DataError, ModelError, ...) are ValueErrors with a message for the user.
        print(f"prunecast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
