"""The ``qt`` command line: thin Typer commands that parse, call a flow, render with Rich."""
