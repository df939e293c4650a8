"""Entry point of the `evasion` command: sub-commands, one-line errors, exit codes.

Exit codes: 0 success, 1 runtime failure, 2 usage error (bad option, config or input), 130 when
interrupted. Errors are one line on stderr; ``--debug`` shows the traceback. Before any command
runs, :func:`evasion.runtime.configure` applies the thread policy (``--threads N``, accepted
before or after the command name, or ``EVASION_THREADS``; default: the free CPUs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__, runtime
from ..errors import EvasionError
from . import attack, evaluate, listing, report, reproduce, runs, train, transfer

__all__ = ["build_parser", "main"]

_THREADS_HELP = (
    f"torch CPU threads (default: the CPUs not busy with other processes, re-checked as the "
    f"run goes; or ${runtime.ENV_VAR})"
)


def _add_threads(parser: argparse.ArgumentParser, default: object) -> None:
    """``--threads`` on ``parser`` and every command below it (given after the command name too)."""
    if not any("--threads" in a.option_strings for a in parser._actions):
        parser.add_argument("--threads", metavar="N", default=default, help=_THREADS_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_threads(child, argparse.SUPPRESS)  # only set when given there


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evasion",
        description="How safe is your image classifier against adversarial examples? "
        "Attack it, defend it, measure it honestly.",
    )
    parser.add_argument("--version", action="version", version=f"evasion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    attack.add_parser(sub)
    listing.add_parsers(sub)
    for module in (evaluate, runs, report, reproduce, train, transfer):
        module.add_parser(sub)
    _add_threads(parser, None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        runtime.configure(args.threads)
        return int(args.func(args) or 0)
    except EvasionError as exc:
        if args.debug:
            raise
        print(f"evasion: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("evasion: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: one line, and how to get the details
        if args.debug:
            raise
        print(
            f"evasion: internal error: {type(exc).__name__}: {exc} (re-run with --debug for details)",
            file=sys.stderr,
        )
        return 1
    finally:
        runtime.restore()  # commands run in-process (tests) leave torch's setting as it was


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
