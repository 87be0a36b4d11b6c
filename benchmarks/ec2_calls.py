"""How many AWS requests a deploy and a destroy of 10, 100 and 1000 EC2 instances make (against moto's server).

Counts every request the EC2 provider makes (``Aws.calls``, a page of a
paginated describe is one) for one role of N instances, from the first look-up
to the hosts recorded, then for the destroy; prints totals, calls per host,
the requests by operation at the largest size, and each phase's time on moto.
The figure that matters at fleet size is calls per host: AWS meters EC2
requests per account and region (token buckets per action class), so calls
that grow with hosts meet throttling that calls per role do not.

Run: `.venv/bin/python benchmarks/ec2_calls.py [--sizes 10 100 1000]` (needs moto[server], from the test extra).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.providers.ec2 import Ec2Provider
from enosnet.testing import local_aws

REGION = "us-west-2"


def fleet(count: int) -> str:
    return (f"name: fleet\nprovider: {{kind: ec2, region: {REGION}, allow_cidr: 203.0.113.7/32, wait_ssh: false, "
            f"running_timeout: 600, destroy_timeout: 600}}\n"
            f"roles: {{client: {{count: {count}, instance_type: t3.micro, az: {REGION}a}}}}\n")


def measure(base: Path, count: int) -> tuple[Counter[str], Counter[str], float, float]:
    provider = Ec2Provider(parse_config(fleet(count)), Environment(base / f"fleet{count}"))
    started = time.monotonic()
    try:
        roles, _ = provider.init()
        assert len(roles.all()) == count
        deployed, deploy_s = Counter(provider.aws.calls), time.monotonic() - started
    finally:
        started = time.monotonic()
        provider.destroy()
    destroyed = provider.aws.calls - deployed
    return deployed, destroyed, deploy_s, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    print(f"{'instances':>9} | {'deploy calls':>12} | {'per host':>8} | {'destroy calls':>13} | {'per host':>8} | "
          f"{'deploy s':>8} | {'destroy s':>9}")
    last: tuple[int, Counter[str], Counter[str]] | None = None
    with local_aws() as server, tempfile.TemporaryDirectory() as tmp:
        for count in args.sizes:
            server.reset()
            deployed, destroyed, deploy_s, destroy_s = measure(Path(tmp), count)
            d, r = sum(deployed.values()), sum(destroyed.values())
            print(f"{count:>9} | {d:>12} | {d / count:>8.3f} | {r:>13} | {r / count:>8.3f} | {deploy_s:>8.1f} | "
                  f"{destroy_s:>9.1f}")
            last = (count, deployed, destroyed)
    if last is not None:
        count, deployed, destroyed = last
        print(f"\nrequests at {count} instances:")
        print("  deploy:  " + ", ".join(f"{op} {n}" for op, n in sorted(deployed.items())))
        print("  destroy: " + ", ".join(f"{op} {n}" for op, n in sorted(destroyed.items())))


if __name__ == "__main__":
    main()
