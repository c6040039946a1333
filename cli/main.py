"""``qt``: the front door. Every command has ``--help``, ``--json`` and ``--home``.

Exit codes: 0 success, 1 runtime error, 2 bad input or failed validation, 130 Ctrl-C.
One module per command group registers its commands on the one Typer app
(:mod:`cli.app`); heavy libraries are imported inside the commands so ``qt --help``
stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from cli.app import app
from cli.output import emit_json

#: Command groups in the order ``qt --help`` lists them; importing one registers its commands.
COMMAND_MODULES = (
    "cli.ingest",
    "cli.train",
    "cli.demo",
    "cli.registry",
    "cli.trading",
    "cli.live",
    "cli.servers",
)
for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Usage errors (an unknown option, a value of the wrong type) exit 2 like every other
    bad input, and under ``--json`` they too print one JSON document on stdout.
    """
    from typer import rich_utils
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer vendors Click

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="qt", standalone_mode=False)
    except NoArgsIsHelpError as err:
        err.show()
        sys.exit(0)
    except ClickException as err:
        if "--json" in args:
            emit_json({"error": f"usage: {err.format_message()}", "exit_code": err.exit_code})
        rich_utils.rich_format_error(err)
        sys.exit(err.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt, before any command ran
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
