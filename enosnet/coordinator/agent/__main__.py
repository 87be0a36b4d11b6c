"""Command line of the agent: ``python3 agent.pyz --config FILE [--daemon --pidfile P]``.

Stdlib-only, Python 3.8 compatible. ``--config`` may be repeated to serve
several agents from one process (the loopback benchmark does so).
"""

from __future__ import annotations

import argparse
import sys

from .runtime import ConfigProblem, load_config
from .supervise import daemonize, run_worker, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enosnet-agent", description="enosnet worker agent")
    parser.add_argument("--config", action="append", required=True, help="agent config file (JSON)")
    parser.add_argument("--daemon", action="store_true", help="run in the background under a supervisor")
    parser.add_argument("--pidfile", help="with --daemon: where the supervisor writes its pid")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        configs = [load_config(path) for path in args.config]
    except (OSError, ValueError, ConfigProblem) as exc:
        sys.stderr.write(f"enosnet agent: bad config: {exc}\n")
        return 2
    if args.check:
        return 0
    if args.daemon:
        if not args.pidfile or len(configs) != 1:
            sys.stderr.write("enosnet agent: --daemon needs --pidfile and exactly one --config\n")
            return 2
        return daemonize(args.config[0], args.pidfile)
    setup_logging(configs[0], to_stderr=False)
    return run_worker(configs)


if __name__ == "__main__":
    sys.exit(main())
