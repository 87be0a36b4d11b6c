"""The EC2 provider against a real local EC2 endpoint (moto's server over HTTP).

The addresses moto hands out are not real hosts: every config here turns the
SSH wait off, and a guard fails any test of this module that opens a socket
to anything but loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.errors import ConfigError
from enosnet.providers import ec2_resources as res
from enosnet.providers import make_provider
from enosnet.providers.ec2 import Ec2Provider

ENOSNET = str(Path(sys.executable).with_name("enosnet"))
REGION = "us-west-2"
TWO_ROLES = f"""\
name: quic
provider: {{kind: ec2, region: {REGION}, allow_cidr: 203.0.113.7/32, wait_ssh: false, running_timeout: 30,
           destroy_timeout: 30}}
roles:
  server: {{count: 2, instance_type: c5n.large, az: {REGION}a, root_volume_gb: 20}}
  client: {{count: 1, instance_type: t3.micro, az: {REGION}b, spot: true}}
"""


# ── guards and helpers ──────────────────────────────────────────────────────


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection this process opens to an address other than loopback."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            assert ipaddress.ip_address(host).is_loopback, f"test tried to connect to {address}"
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def endpoint(moto_server: Any) -> Any:
    """moto, reset once for this module: re-creating its EC2 backend costs seconds, and every test here
    releases what it creates (which each test checks)."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def ec2(endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 EC2 client on the local endpoint, which holds nothing of enosnet at the start."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a local endpoint does not throttle; fail fast
    client = boto3.client("ec2", region_name=REGION)
    assert leftovers(client) == {}, "an earlier test leaked"
    return client


def deploy(tmp_path: Path, text: str = TWO_ROLES, *, name: str = "env") -> Ec2Provider:
    provider = make_provider(parse_config(text), Environment(tmp_path / name))
    assert isinstance(provider, Ec2Provider)
    return provider


def leftovers(client: Any) -> dict[str, list[str]]:
    """Everything of enosnet still there: live instances, security groups and key pairs (by tag or name)."""
    live = ["pending", "running", "stopping", "stopped"]
    reservations = client.describe_instances(Filters=[{"Name": "instance-state-name", "Values": live}])
    instances = [i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]
                 if any(t["Key"].startswith("enosnet:") for t in i.get("Tags", []))]
    groups = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith("enosnet-") or "enosnet:env" in {t["Key"] for t in g.get("Tags", [])}]
    keys = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("enosnet-")]
    return {k: v for k, v in {"instances": instances, "security_groups": groups, "key_pairs": keys}.items() if v}


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def enosnet(*args: str, cwd: Path, extra_env: dict[str, str] | None = None,
            stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI with an ``ssh``/``scp`` on PATH that refuses and records: nothing may SSH to moto's addresses."""
    guard = cwd / ".ssh-guard"
    guard.mkdir(exist_ok=True)
    for tool in ("ssh", "scp"):
        (guard / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {guard}/attempts\nexit 255\n')
        (guard / tool).chmod(0o755)
    env = {**os.environ, "COLUMNS": "200", **(extra_env or {})}
    env["PATH"] = f"{guard}:{env.get('PATH', '')}"
    out = subprocess.run([ENOSNET, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env,
                         input=stdin)
    attempts = guard / "attempts"
    assert not attempts.exists(), f"`enosnet {' '.join(args)}` tried to SSH: {attempts.read_text()}"
    return out


# ── lifecycle ───────────────────────────────────────────────────────────────


def test_full_lifecycle_two_roles_in_two_zones(ec2: Any, tmp_path: Path) -> None:
    provider = deploy(tmp_path)
    try:
        roles, networks = provider.init()
        state = provider.provider_state
        ids = state["instances"]
        assert len(ids) == 3 and sorted(roles) == ["client", "server"]
        described = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                     for i in r["Instances"]}
        by_alias = {h["alias"]: described[h["id"]] for h in state["hosts"]}
        assert sorted(by_alias) == ["client-0", "server-0", "server-1"]
        server, client = by_alias["server-0"], by_alias["client-0"]
        # one Name per role, given at launch: a tag per host would cost a request per host
        assert {alias: tags(i)["Name"] for alias, i in by_alias.items()} == {
            "client-0": "quic-client", "server-0": "quic-server", "server-1": "quic-server"}
        launches = state["launches"]
        for alias, inst in by_alias.items():  # the launch each came from names its slot by launch index
            launch = launches[tags(inst)["enosnet:launch"]]
            assert f"{launch['role']}-{launch['slots'][inst['AmiLaunchIndex']]}" == alias
        assert server["Placement"]["AvailabilityZone"] == f"{REGION}a"
        assert client["Placement"]["AvailabilityZone"] == f"{REGION}b"
        assert server["InstanceType"] == "c5n.large" and client.get("InstanceLifecycle") == "spot"
        for inst in described.values():
            t = tags(inst)
            assert t["enosnet:env"] == state["env_id"] and t["enosnet:owner"] == state["owner"]
            assert t["enosnet:expires"] == state["expires"] and t["enosnet:role"] in ("server", "client")
            assert inst["KeyName"] == state["key_pair"]
        attribute = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="instanceInitiatedShutdownBehavior")
        assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        user_data = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")["UserData"]["Value"]
        assert "shutdown -P +240" in base64.b64decode(user_data).decode()  # the 4 h safety net, scheduled at boot

        group = ec2.describe_security_groups(GroupIds=[state["security_group"]])["SecurityGroups"][0]
        rules = {(p["IpProtocol"], p.get("FromPort")): p for p in group["IpPermissions"]}
        assert rules[("tcp", 22)]["IpRanges"][0]["CidrIp"] == "203.0.113.7/32"
        assert rules[("udp", 7700)]["IpRanges"][0]["CidrIp"] == "203.0.113.7/32"
        assert rules[("-1", None)]["UserIdGroupPairs"][0]["GroupId"] == group["GroupId"]
        assert set(rules) == {("tcp", 22), ("udp", 7700), ("-1", None)}
        assert tags(group)["enosnet:env"] == state["env_id"]

        key = ec2.describe_key_pairs(KeyNames=[state["key_pair"]])["KeyPairs"][0]
        assert key["KeyType"] == "ed25519" and tags(key)["enosnet:env"] == state["env_id"]
        public = Path(f"{provider.env.key_file}.pub").read_text().split()[1]
        assert provider.env.key_file.stat().st_mode & 0o077 == 0 and public  # private key stays here

        inventory = yaml.safe_load(provider.env.inventory_file.read_text())["all"]
        assert set(inventory["children"]) == {"server", "client"}
        assert set(inventory["children"]["server"]["hosts"]) == {"server-0", "server-1"}
        host = inventory["hosts"]["server-0"]
        assert host["ansible_host"] == server["PublicIpAddress"] and host["ansible_user"] == "ec2-user"
        assert host["enosnet_private_address"] == server["PrivateIpAddress"]
        assert host["ansible_ssh_private_key_file"] == str(provider.env.key_file)
        assert {n.name for n in networks.values()} == {f"ec2-{REGION}a", f"ec2-{REGION}b"}
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}
    assert provider.provider_state == {}
    provider.destroy()  # idempotent


def fleet(count: int) -> str:
    return (f"name: fleet\nprovider: {{kind: ec2, region: {REGION}, allow_cidr: 203.0.113.7/32, wait_ssh: false, "
            f"running_timeout: 60, destroy_timeout: 60}}\n"
            f"roles: {{client: {{count: {count}, instance_type: t3.micro, az: {REGION}a}}}}\n")


def test_the_aws_calls_of_a_deploy_and_a_destroy_do_not_grow_with_the_fleet(ec2: Any, tmp_path: Path) -> None:
    """One launch per role and paginated describes: 100 instances cost the calls of 10 (counted at the endpoint)."""
    counted: dict[int, tuple[int, int]] = {}
    for count in (10, 100):
        provider = deploy(tmp_path, fleet(count), name=f"fleet{count}")
        try:
            roles, _ = provider.init()
            assert len(roles.all()) == count
            deployed = sum(provider.aws.calls.values())
            assert provider.aws.calls["ec2.RunInstances"] == 1
        finally:
            provider.destroy()
        counted[count] = (deployed, sum(provider.aws.calls.values()) - deployed)
        assert sum(provider.aws.attempts.values()) >= sum(provider.aws.calls.values())
    (deploy10, destroy10), (deploy100, destroy100) = counted[10], counted[100]
    assert deploy100 <= deploy10 + 2 and destroy100 <= destroy10 + 2, counted
    assert deploy100 / 100 < 0.5, counted  # calls per host
    assert leftovers(ec2) == {}


def test_second_deploy_reuses_the_instances(ec2: Any, tmp_path: Path) -> None:
    provider = deploy(tmp_path)
    try:
        first, _ = provider.init()
        ids = sorted(provider.provider_state["instances"])
        again = deploy(tmp_path)  # a new process would build a new provider from the same config
        second, _ = again.init()
        assert second == first and sorted(again.provider_state["instances"]) == ids
        assert len(leftovers(ec2)["instances"]) == 3
        # even when the state forgot the hosts, a forced deploy finds them by tag instead of launching more
        third, _ = again.init(force=True)
        assert third == first
        assert len(leftovers(ec2)["instances"]) == 3
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}


def test_two_controllers_with_the_same_folder_never_share_instances(ec2: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        first = deploy(tmp_path, name="env")
        first.init()
        mine, first_id = sorted(first.provider_state["instances"]), first.env_id
        (tmp_path / "env").rename(tmp_path / "first")  # another controller: same folder path, its own state
        monkeypatch.setattr(res, "owner_id", lambda: "ci@runner-2")
        other = deploy(tmp_path, name="env")
        other.init()
        assert other.env_id != first_id  # random, not derived from the path
        assert not set(other.provider_state["instances"]) & set(mine)
        (tmp_path / "env").rename(tmp_path / "second")
        # even under the same environment id, another owner's instances are never reused
        third = deploy(tmp_path, name="env")
        third.env.create()
        third.env.update_state(provider={"env_id": first_id, "owner": "ci@runner-3"})
        third.init(force=True)
        assert not set(third.provider_state["instances"]) & set(mine)
        third.destroy()
        live = ec2.describe_instances(InstanceIds=mine)["Reservations"][0]["Instances"]
        assert {i["State"]["Name"] for i in live} == {"running"}  # the first controller's hosts are untouched
    finally:
        for folder in ("env", "second", "first"):
            if (tmp_path / folder).exists():
                make_provider(parse_config(TWO_ROLES), Environment(tmp_path / folder)).destroy()
    assert leftovers(ec2) == {}


def test_a_reused_group_loses_the_ingress_of_a_wider_allow_cidr(ec2: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    provider = deploy(tmp_path, TWO_ROLES.replace("203.0.113.7/32", "0.0.0.0/0"))
    try:
        provider.init()
        assert "opens SSH and the agents' UDP port to the whole internet" in caplog.text
        narrowed = deploy(tmp_path)
        narrowed.init()
        group = ec2.describe_security_groups(GroupIds=[narrowed.provider_state["security_group"]])["SecurityGroups"][0]
        sources = {(p["IpProtocol"], p.get("FromPort"), r["CidrIp"]) for p in group["IpPermissions"]
                   for r in p.get("IpRanges", [])}
        assert sources == {("tcp", 22, "203.0.113.7/32"), ("udp", 7700, "203.0.113.7/32")}
        assert any(g["GroupId"] == group["GroupId"] for p in group["IpPermissions"]
                   for g in p.get("UserIdGroupPairs", []))
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}


def test_hosts_without_keys_on_their_console_are_named_and_reached_on_first_use(
        ec2: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    provider = deploy(tmp_path)
    try:
        provider.init()
        hosts = provider._pin_host_keys(provider.provider_state["hosts"])  # moto's console shows a kernel log only
        assert "no host keys in the console output of server-0, server-1, client-0" in caplog.text
        assert not any(h.get("pinned") for h in hosts)
        args = {h.extra["ansible_ssh_common_args"] for h in provider.roles_from(hosts).all()}
        assert all("StrictHostKeyChecking=accept-new" in a for a in args)
        pinned = provider.roles_from([{**hosts[0], "pinned": True}]).all()[0]
        assert "StrictHostKeyChecking=yes" in pinned.extra["ansible_ssh_common_args"]
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}


def test_a_changed_role_replaces_only_its_hosts(ec2: Any, tmp_path: Path) -> None:
    provider = deploy(tmp_path)
    try:
        provider.init()
        before = {h["alias"]: h["id"] for h in provider.provider_state["hosts"]}
        changed = deploy(tmp_path, TWO_ROLES.replace("instance_type: t3.micro", "instance_type: t3.small"))
        changed.init()
        after = {h["alias"]: h["id"] for h in changed.provider_state["hosts"]}
        assert after["server-0"] == before["server-0"] and after["server-1"] == before["server-1"]
        assert after["client-0"] != before["client-0"]
        old = ec2.describe_instances(InstanceIds=[before["client-0"]])["Reservations"][0]["Instances"][0]
        assert old["State"]["Name"] in ("shutting-down", "terminated")
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}


def test_dry_run_prints_the_plan_and_creates_nothing(ec2: Any, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(TWO_ROLES)
    out = enosnet("deploy", "-c", "c.yaml", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 × c5n.large for role server in us-west-2a" in out.stdout
    assert "1 × t3.micro (spot) for role client in us-west-2b" in out.stdout
    assert "SSH and agent UDP from 203.0.113.7/32" in out.stdout
    assert "~$0.23 (approx.) per hour" in out.stdout  # 2 × 0.108 + 0.0104
    assert leftovers(ec2) == {}
    assert not (tmp_path / ".enosnet" / "quic" / "inventory.yaml").exists()


def test_cli_deploy_status_destroy(ec2: Any, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(TWO_ROLES)
    try:
        out = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "deployed 3 hosts (server: 2, client: 1)" in out.stdout
        assert "install skipped" in out.stdout  # wait_ssh: false: the hosts need not be reachable
        out = enosnet("status", cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count("running, up ") == 3 and "ssh:" not in out.stdout  # no SSH probe to moto
        assert "cost: 3 hosts, ~$0.23 (approx.) per hour" in out.stdout
        doc = yaml.safe_load(enosnet("status", "--json", cwd=tmp_path).stdout)
        assert doc["cost"]["hosts"] == 3 and doc["cost"]["accrued"] > 0
    finally:
        out = enosnet("destroy", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert leftovers(ec2) == {}


def test_status_never_probes_ssh_on_a_local_endpoint(ec2: Any, tmp_path: Path) -> None:
    provider = deploy(tmp_path)
    try:
        provider.init()
        # the same environment seen through a config that waits for SSH: status still must not probe moto's
        # addresses (the loopback guard fails this test if it connects anywhere else)
        checker = deploy(tmp_path, TWO_ROLES.replace("wait_ssh: false", "wait_ssh: true"))
        rows = checker.status()
        assert [r.reachable for r in rows] == [True, True, True]
        assert all("ssh" not in r.detail for r in rows)
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}


def test_subnet_by_tags_existing_key_and_ipv6_controller_range(ec2: Any, tmp_path: Path) -> None:
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24", AvailabilityZone=f"{REGION}c", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": "bench"}]}])["Subnet"]["SubnetId"]
    ec2.create_key_pair(KeyName="mine", KeyType="ed25519")
    text = f"""\
name: custom
provider: {{kind: ec2, region: {REGION}, allow_cidr: "2001:db8::/48", wait_ssh: false, key_name: mine,
           keyfile: ~/.ssh/mine, subnet_tags: {{Name: bench}}}}
roles: {{server: 2}}
"""
    provider = deploy(tmp_path, text)
    try:
        roles, networks = provider.init()
        described = [i for r in ec2.describe_instances(InstanceIds=provider.provider_state["instances"])[
            "Reservations"] for i in r["Instances"]]
        assert {i["SubnetId"] for i in described} == {subnet} and {i["KeyName"] for i in described} == {"mine"}
        assert all(h.keyfile == "~/.ssh/mine" for h in roles.all())
        assert [n.cidr for n in networks.values()] == ["10.20.1.0/24"]
        group = ec2.describe_security_groups(GroupIds=[provider.provider_state["security_group"]])["SecurityGroups"][0]
        assert group["VpcId"] == vpc
        ssh = next(p for p in group["IpPermissions"] if p.get("FromPort") == 22)
        assert ssh["Ipv6Ranges"][0]["CidrIpv6"] == "2001:db8::/48"
    finally:
        provider.destroy()
    assert leftovers(ec2) == {}
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["mine"]  # not ours to delete
    ec2.delete_key_pair(KeyName="mine")
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)


def test_subnet_id_in_another_zone_is_a_config_error(ec2: Any, tmp_path: Path) -> None:
    subnet = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [f"{REGION}c"]},
                                           {"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]["SubnetId"]
    provider = deploy(tmp_path, TWO_ROLES.replace("wait_ssh: false", f"wait_ssh: false, subnet_id: {subnet}"))
    with pytest.raises(ConfigError, match=rf"subnet {subnet} is in {REGION}c, not in {REGION}a"):
        provider.plan()
    assert leftovers(ec2) == {}
