"""`python -m lit_softmax <subcommand> ...`: fit, validate, test, predict and export (lit_softmax/cli.py), and sweep
(lit_softmax/sweep.py, its own small command line over the same CLI)."""

from __future__ import annotations

import sys

from lit_softmax.errors import exit_on_user_error


def main(args: list[str] | None = None) -> None:
    """`args`: the command line without the program name (None: `sys.argv`)."""
    if (sys.argv[1:] if args is None else args)[:1] == ["sweep"]:
        with exit_on_user_error():  # a missing optuna says which extra to install
            from lit_softmax.sweep import sweep_main  # optuna only when sweeping

            sweep_main((sys.argv[1:] if args is None else args)[1:])
    else:
        from lit_softmax.cli import main as cli_main

        cli_main(args)


if __name__ == "__main__":
    main()
