"""EC2 faults against moto's server: deploy killed after each AWS call, sweeps without state, real errors.

Each test checks that nothing of enosnet is left running: no pending or
running instance, no security group, no key pair. (moto does not implement
placement groups: their release is proven with botocore's Stubber in
test_ec2_stubbed.py.)
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from enosnet.config import EnvConfig, parse_config
from enosnet.environment import Environment
from enosnet.providers import ec2_resources as res
from enosnet.providers import make_provider
from enosnet.providers.ec2_aws import KILL_AFTER_CALL_VAR, Aws
from tests.test_ec2_provider import REGION, endpoint, enosnet, leftovers, loopback_only  # noqa: F401
from tests.test_ec2_provider import ec2 as ec2

ONE_EACH = f"""\
name: kill
provider: {{kind: ec2, region: {REGION}, allow_cidr: 198.51.100.0/24, wait_ssh: false, running_timeout: 30,
           destroy_timeout: 30}}
roles:
  server: {{count: 1, instance_type: c5n.large, az: {REGION}a}}
  client: {{count: 1, instance_type: c5n.large, az: {REGION}b}}
"""
UNREADABLE_PLACEMENT = "placement groups could not be listed"  # moto does not implement them


def destroy_from_state(env_dir: Path) -> None:
    """What `enosnet destroy --env DIR` does, in this process (faster than a new interpreter)."""
    environment = Environment(env_dir)
    config = environment.state().config
    if config is not None:
        make_provider(EnvConfig.model_validate(config), environment).destroy()


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    (tmp_path / name).write_text(text)
    return name


# ── crashes ─────────────────────────────────────────────────────────────────


def test_deploy_killed_after_each_aws_call_then_destroy_leaves_nothing(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH)
    calls = 0
    while True:
        calls += 1
        assert calls < 40, "deploy never completed"
        env_dir = tmp_path / f"killed-after-{calls}"
        out = enosnet("deploy", "-c", config, "--env", str(env_dir), cwd=tmp_path,
                      extra_env={KILL_AFTER_CALL_VAR: str(calls)})
        finished = out.returncode == 0
        assert finished or out.returncode == -signal.SIGKILL, out.stderr
        destroy_from_state(env_dir)
        assert leftovers(ec2) == {}, f"leak after a SIGKILL right after AWS call {calls}"
        if finished:
            break
    assert calls > 10  # look-ups, key, group, rules, 2 launches (tagged at creation), waits: each a kill point


def test_a_deploy_killed_right_after_a_launch_adopts_that_launch_when_run_again(ec2: Any, tmp_path: Path) -> None:
    """The launch's slots were in the state before the request: the next deploy knows which instance is which."""
    config = write(tmp_path, ONE_EACH)
    env_dir = tmp_path / "again"
    killed = enosnet("deploy", "-c", config, "--env", str(env_dir), cwd=tmp_path,
                     extra_env={KILL_AFTER_CALL_VAR: "9"})  # right after the first launch
    assert killed.returncode == -signal.SIGKILL
    [first] = leftovers(ec2)["instances"]
    again = enosnet("deploy", "-c", config, "--env", str(env_dir), cwd=tmp_path)
    try:
        assert again.returncode == 0, again.stderr
        hosts = {h["alias"]: h["id"] for h in Environment(env_dir).state().provider["hosts"]}
        assert len(hosts) == 2 and first in hosts.values()  # adopted in its slot, not launched twice
        assert sorted(leftovers(ec2)["instances"]) == sorted(hosts.values())
    finally:
        destroy_from_state(env_dir)
    assert leftovers(ec2) == {}


def test_destroy_all_without_state_finds_everything_by_tag(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH)
    done = enosnet("deploy", "-c", config, "--env", str(tmp_path / "complete"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    killed = enosnet("deploy", "-c", config, "--env", str(tmp_path / "killed"), cwd=tmp_path,
                     extra_env={KILL_AFTER_CALL_VAR: "9"})  # right after the first launch
    assert killed.returncode == -signal.SIGKILL
    assert len(leftovers(ec2)["instances"]) == 3
    for folder in ("complete", "killed"):
        shutil.rmtree(tmp_path / folder)  # no state left anywhere
    out = enosnet("destroy", "--all", "--provider", "ec2", "--region", REGION, cwd=tmp_path)
    assert "released 3 instances, 0 placement groups, 2 security groups, 2 key pairs" in out.stdout, out.stderr
    assert leftovers(ec2) == {}
    # the one thing it could not do here is list placement groups, which moto does not implement
    assert out.returncode == 1 and out.stderr.count("not released:") == 1 and UNREADABLE_PLACEMENT in out.stderr


def test_sweep_takes_only_the_owners_resources_unless_any_owner(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH)
    other = {"USER": "someone-else", "LOGNAME": "someone-else"}
    assert enosnet("deploy", "-c", config, "--env", "theirs", cwd=tmp_path, extra_env=other).returncode == 0
    out = enosnet("destroy", "--all", "--provider", "ec2", "--region", REGION, cwd=tmp_path)
    assert "found in us-west-2" in out.stdout and "0 instances" in out.stdout
    assert len(leftovers(ec2)["instances"]) == 2
    refused = enosnet("destroy", "--all", "--provider", "ec2", "--any-owner", cwd=tmp_path, stdin="n\n",
                      extra_env={"AWS_DEFAULT_REGION": REGION})
    assert refused.returncode == 1 and "whoever created them?" in refused.stdout
    assert len(leftovers(ec2)["instances"]) == 2
    out = enosnet("destroy", "--all", "--provider", "ec2", "--any-owner", "--yes", "--region", REGION, cwd=tmp_path)
    assert "released 2 instances" in out.stdout, out.stderr
    assert leftovers(ec2) == {}


def test_sweep_expired_takes_only_what_passed_its_lifetime(ec2: Any, tmp_path: Path) -> None:
    short = write(tmp_path, ONE_EACH.replace("wait_ssh: false", "wait_ssh: false, max_lifetime_hours: 0.0001"),
                  "short.yaml")
    assert enosnet("deploy", "-c", short, "--env", "short", cwd=tmp_path).returncode == 0
    assert enosnet("deploy", "-c", write(tmp_path, ONE_EACH), "--env", "long", cwd=tmp_path).returncode == 0
    time.sleep(0.5)  # 0.0001 h is 0.36 s
    out = enosnet("destroy", "--all", "--provider", "ec2", "--expired", "--region", REGION, cwd=tmp_path)
    assert "released 2 instances, 0 placement groups, 1 security groups, 1 key pairs" in out.stdout, out.stderr
    assert len(leftovers(ec2)["instances"]) == 2
    destroy_from_state(tmp_path / "long")
    assert leftovers(ec2) == {}


# ── errors, produced for real ───────────────────────────────────────────────


def test_no_credentials(ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, ONE_EACH)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 1
    assert "no AWS credentials found" in out.stderr and "[NoCredentials]" in out.stderr
    assert "hint: configure AWS credentials" in out.stderr and "Traceback" not in out.stderr
    monkeypatch.undo()
    assert leftovers(ec2) == {}


@pytest.mark.parametrize(("ami", "code", "says"), [
    ("ami-0123456789abcdef0", "InvalidAMIID.NotFound", "AMIs are regional"),
    ("/aws/service/no/such/parameter", "ParameterNotFound", "no such SSM public parameter"),
])
def test_unknown_ami(ec2: Any, tmp_path: Path, ami: str, code: str, says: str) -> None:
    config = write(tmp_path, ONE_EACH.replace("az: us-west-2b}", f"az: us-west-2b, ami: '{ami}'}}"))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 1 and f"[{code}]" in out.stderr and says in out.stderr, out.stderr
    assert leftovers(ec2) == {}


def test_a_failed_launch_releases_what_deploy_created(ec2: Any, tmp_path: Path) -> None:
    # the server is launched, then AWS refuses the client's instance type: the server must not stay
    config = write(tmp_path, ONE_EACH.replace("instance_type: c5n.large, az: us-west-2b",
                                              "instance_type: c5n.huge, az: us-west-2b"))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 1 and "c5n.huge" in out.stderr, out.stderr
    assert "released what it had acquired" in out.stderr
    assert leftovers(ec2) == {}


def test_keep_on_error_keeps_it_for_a_later_destroy(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH.replace("instance_type: c5n.large, az: us-west-2b",
                                              "instance_type: c5n.huge, az: us-west-2b"))
    out = enosnet("deploy", "-c", config, "--keep-on-error", "--env", "kept", cwd=tmp_path)
    assert out.returncode == 1 and "kept what it acquired" in out.stderr
    assert len(leftovers(ec2)["instances"]) == 1
    out = enosnet("destroy", "--env", "kept", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert leftovers(ec2) == {}


def test_allow_cidr_is_required_with_a_local_endpoint(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH.replace("allow_cidr: 198.51.100.0/24, ", ""))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 2 and "provider.allow_cidr is required" in out.stderr
    assert leftovers(ec2) == {}


def test_no_region(ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, ONE_EACH.replace(f"region: {REGION}, ", ""))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 1 and "[NoRegion]" in out.stderr and "AWS_DEFAULT_REGION" in out.stderr
    out = enosnet("destroy", "--all", "--provider", "ec2", cwd=tmp_path)
    assert out.returncode == 1 and "[NoRegion]" in out.stderr


def test_unknown_key_pair(ec2: Any, tmp_path: Path) -> None:
    config = write(tmp_path, ONE_EACH.replace("wait_ssh: false", "wait_ssh: false, key_name: nobody"))
    out = enosnet("deploy", "-c", config, cwd=tmp_path)
    assert out.returncode == 1 and "[InvalidKeyPair.NotFound]" in out.stderr and "check `key_name`" in out.stderr
    assert leftovers(ec2) == {}


def test_expired_sweep_keeps_the_group_and_key_of_an_environment_still_alive(ec2: Any, tmp_path: Path) -> None:
    short = ONE_EACH.replace("wait_ssh: false", "wait_ssh: false, max_lifetime_hours: 0.0001")
    env = Environment(tmp_path / "mixed")
    make_provider(parse_config(short), env).init()
    time.sleep(0.5)
    # a later deploy adds a host with a later expiry to the same environment
    grown = make_provider(parse_config(ONE_EACH.replace("server: {count: 1", "server: {count: 2")), env)
    grown.init()
    report = res.sweep(Aws(REGION), owner=res.owner_id(), expired_only=True, timeout=30)
    assert len(report.problems) == 1 and UNREADABLE_PLACEMENT in report.problems[0]
    assert len(report.released.instances) == 2 and report.released.security_groups == []
    assert report.released.key_pairs == []
    left = leftovers(ec2)
    assert len(left["instances"]) == 1 and left["security_groups"] and left["key_pairs"]
    grown.destroy()
    assert leftovers(ec2) == {}
