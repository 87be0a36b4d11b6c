"""EnOSlib's first tutorial (two hosts, iperf3 between them), ported to enosnet.

EnOSlib reserves two Grid'5000 nodes, starts an iperf3 server on one and a
client on the other; here the two hosts are local namespace hosts (the
embedded default provider), released when the block ends, also on error.
Run as root: `sudo .venv/bin/python examples/enoslib_tutorial.py`.
"""

from __future__ import annotations

import json

import enosnet

CONFIG = {"name": "tuto", "provider": {"kind": "local"}, "roles": {"server": 1, "client": 1}}


def main() -> None:
    with enosnet.deploy(CONFIG) as testbed:
        server = testbed.roles["server"][0]
        testbed.run("iperf3 -s -D -1", role="server", strict=True)  # a daemon serving one test
        result = testbed.run(f"iperf3 -c {server.address} -t 3 -J", role="client", strict=True)
        for client, output in result.items():
            rate = json.loads(output.stdout)["end"]["sum_received"]["bits_per_second"]
            print(f"{client.name} -> {server.name}: {rate / 1e9:.2f} Gbit/s")


if __name__ == "__main__":
    main()
