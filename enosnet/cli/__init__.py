"""The ``enosnet`` command: a thin layer over the library.

Each area registers its commands from its own module; this module only builds
the app and turns library errors into messages and exit codes (2 for usage and
config errors, 1 for operational failures).
"""

from __future__ import annotations

import sys

import typer

from enosnet.cli import bench as bench_commands
from enosnet.cli import env as env_commands
from enosnet.cli import netem as netem_commands
from enosnet.cli import remote as remote_commands
from enosnet.cli import results as results_commands
from enosnet.cli.common import err_console, print_error
from enosnet.errors import ConfigError, EnosnetError

app = typer.Typer(
    name="enosnet",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help=(
        "Run network benchmark experiments on many hosts.\n\n"
        "Typical session: `enosnet deploy -c env.yaml` (acquire hosts and install tools), "
        "`enosnet bench experiment.yaml` (run it), `enosnet report` (statistics, plots, HTML), "
        "`enosnet backup`, `enosnet destroy`. Commands find the environment through --env PATH "
        "or the .enosnet/current link."
    ),
)

env_commands.register(app)
results_commands.register(app)
bench_commands.register(app)
remote_commands.register(app)
netem_commands.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=True)
    except ConfigError as exc:
        print_error(exc)
        sys.exit(2)
    except EnosnetError as exc:
        print_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
