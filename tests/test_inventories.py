"""The example inventories in ``inventories/`` stay valid: enosnet reads the static config, Ansible the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enosnet.config import load_config
from enosnet.environment import Environment
from enosnet.inventory import inventory_dict
from enosnet.providers import make_provider

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_INVENTORY = str(Path(sys.executable).with_name("ansible-inventory"))


def test_the_static_example_gives_the_roles_it_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example names its hosts file from the repository's top
    config = load_config(ROOT / "inventories" / "static-env.yaml")
    roles, _ = make_provider(config, Environment(tmp_path / "lab")).init()  # nothing is contacted
    assert {role: [h.name for h in hosts] for role, hosts in roles.items()} == {
        "server": ["server-0"], "client": ["client-0", "client-1"], "spare": ["192.0.2.20", "192.0.2.21"]}
    assert roles.find("client-1").port == 2222 and roles.find("192.0.2.21").port == 2222
    # the plain Ansible example is the shape enosnet writes for these hosts (less the spares)
    written = inventory_dict(roles)["all"]
    example = yaml.safe_load((ROOT / "inventories" / "hosts.yaml").read_text())["all"]
    assert example["children"] == {r: written["children"][r] for r in ("server", "client")}
    for name, hostvars in example["hosts"].items():
        assert {k: v for k, v in written["hosts"][name].items() if k in hostvars} == hostvars


@pytest.mark.parametrize("name", ["hosts.yaml", "hosts.ini"])
def test_ansible_reads_the_plain_inventories_with_one_group_per_role(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    out = subprocess.run([ANSIBLE_INVENTORY, "-i", str(ROOT / "inventories" / name), "--list"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    listed = json.loads(out.stdout)
    assert listed["server"]["hosts"] == ["server-0"] and listed["client"]["hosts"] == ["client-0", "client-1"]
    hostvars = listed["_meta"]["hostvars"]
    assert hostvars["client-1"]["ansible_host"] == "192.0.2.12" and int(hostvars["client-1"]["ansible_port"]) == 2222
    assert all(v["ansible_user"] == "root" for v in hostvars.values())
