"""What every CLI command shares: the --env option, consoles, turning errors into exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from enosnet.environment import Environment

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EnvOption = Annotated[
    Path | None,
    typer.Option("--env", "-e", help="Environment directory (default: the one .enosnet/current points at)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON document.")]


def find_env(path: Path | None) -> Environment:
    """The environment named by --env, else the current one; raises EnvironmentNotFound."""
    return Environment.find(path)


def print_error(exc: BaseException) -> None:
    """``error: <message>`` in red on stderr; the message is printed verbatim."""
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    for note in getattr(exc, "__notes__", ()):  # e.g. what a failed deploy released or kept
        err_console.print(f"  {escape(str(note))}", soft_wrap=True)
