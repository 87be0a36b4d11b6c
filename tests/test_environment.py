"""The environment directory: atomic state, the current link, keys and the secret."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from enosnet.bench.runner import run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.environment import Environment
from enosnet.errors import EnosnetError, EnvironmentBusy, EnvironmentNotFound


def test_state_round_trip_and_update(tmp_path: Path) -> None:
    env = Environment(tmp_path / "e").create()
    assert env.load_state() is None
    env.save_state({"a": 1})
    assert env.update_state(b=2) == {"a": 1, "b": 2}
    assert not [p for p in env.root.iterdir() if p.name.startswith(".state")]


def test_find_by_path_and_current_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnvironmentNotFound, match="enosnet deploy"):
        Environment.find()
    env = Environment.for_name("demo").create()
    env.save_state({})
    env.mark_current()
    assert Environment.find().root == env.root
    assert Environment.find(env.root).root == env.root
    assert os.readlink(tmp_path / ".enosnet" / "current") == "demo"
    with pytest.raises(EnvironmentNotFound, match="not an enosnet environment"):
        Environment.find(tmp_path / "elsewhere")


def test_unreadable_state_is_reported(tmp_path: Path) -> None:
    env = Environment(tmp_path / "e").create()
    env.state_file.write_text("{half")
    with pytest.raises(EnvironmentNotFound, match="unreadable state"):
        env.load_state()


def test_keypair_and_secret_are_made_once(tmp_path: Path) -> None:
    env = Environment(tmp_path / "e")
    key = env.ensure_keypair()
    assert env.public_key().startswith("ssh-ed25519 ")
    assert env.ensure_keypair() == key and key.read_text() == env.key_file.read_text()
    secret = env.secret()
    assert len(secret) == 64 and env.secret() == secret
    assert stat.S_IMODE(env.secret_file.stat().st_mode) == 0o600


def test_tag_is_stable_per_directory(tmp_path: Path) -> None:
    assert Environment(tmp_path / "a").tag == Environment(tmp_path / "a").tag
    assert Environment(tmp_path / "a").tag != Environment(tmp_path / "b").tag


def test_a_second_deploy_bench_or_destroy_of_one_environment_fails_at_once(tmp_path: Path) -> None:
    env = Environment(tmp_path / "lab")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from enosnet.environment import Environment\n"
         f"with Environment({str(env.root)!r}).lock('bench'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(EnvironmentBusy, match=rf"lab is busy: enosnet bench \(pid {holder.pid}, since"), \
                env.lock("deploy"):
            pass
        spec = parse_experiment("name: x\ndriver: iperf3\n")
        with pytest.raises(EnvironmentBusy, match="enosnet bench"):
            run_experiment(env, spec)
    finally:
        holder.kill()
        holder.wait()
    with env.lock("destroy"):  # the kernel released the lock of the killed holder
        assert "enosnet destroy" in (env.root / ".lock").read_text()


def test_an_environment_folder_that_cannot_be_made_is_named_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EnosnetError, match=r"file/lab: cannot create the environment folder \(Not a directory\)"), \
            Environment(tmp_path / "file" / "lab").lock("deploy"):
        pass


def test_a_state_of_the_wrong_shape_is_named_not_a_traceback(tmp_path: Path) -> None:
    env = Environment(tmp_path / "e").create()
    env.save_state({"kind": "local", "roles": ["server-0"]})
    with pytest.raises(EnvironmentNotFound, match=r"state.json: unreadable state: roles is list, not an object"):
        env.state()
    env.save_state({"kind": "local", "acquired": True, "released": True,
                    "roles": {"server": [{"address": "198.18.0.2"}]}, "agent": {"env_id": "e", "port": 7800}})
    state = env.state()
    assert state.deployed is None and state.roles.all() and state.agent_port == 7800  # released: no hosts to use
