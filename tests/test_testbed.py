"""``enosnet.deploy`` / ``attach``: the whole testbed in one call, released at the end of its block."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import enosnet
from enosnet.config import EnvConfig
from enosnet.errors import ConfigError
from enosnet.testbed import as_config, as_experiment

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"name": "tb", "provider": {"kind": "local"}, "roles": {"server": 1, "client": 1}}


def reasons(config: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        as_config(config)  # type: ignore[arg-type]
    return [reason for _where, reason in caught.value.problems]


def test_a_config_is_one_thing_as_a_dict_text_path_or_model(tmp_path: Path) -> None:
    text = yaml.safe_dump(CONFIG, sort_keys=False)
    (tmp_path / "env.yaml").write_text(text)
    made = [as_config(CONFIG), as_config(text), as_config(tmp_path / "env.yaml"), as_config(str(tmp_path / "env.yaml"))]
    assert all(isinstance(c, EnvConfig) and c == made[0] for c in made)
    assert as_config(made[0]) is made[0]
    bad = {**CONFIG, "roles": {"server": -1}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    expected = reasons(bad)
    assert expected and reasons(yaml.safe_dump(bad, sort_keys=False)) == expected == reasons(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the config file"):
        as_config("missing.yaml")


def test_an_experiment_is_one_thing_as_a_dict_text_or_path() -> None:
    from_file = as_experiment(ROOT / "examples" / "incast.yaml")
    as_dict = yaml.safe_load((ROOT / "examples" / "incast.yaml").read_text())
    assert as_experiment(as_dict).parameters == from_file.parameters
    assert as_experiment(from_file) is from_file


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_deploy_releases_the_hosts_when_the_body_raises(tmp_path: Path) -> None:
    env = tmp_path / "tb"
    with pytest.raises(RuntimeError, match="the experiment broke"), \
            enosnet.deploy(CONFIG, env=env, install=False) as testbed:
        assert [h.name for h in testbed.roles.all()] == ["server-0", "client-0"]
        assert testbed.run("hostname", strict=True).ok
        attached = enosnet.attach(env)
        assert attached.roles == testbed.roles and attached.keep
        with attached:  # leaving an attached testbed's block releases nothing
            pass
        assert testbed.run("true", role="client", strict=True).ok
        raise RuntimeError("the experiment broke")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert testbed.env.tag not in namespaces
    assert (testbed.env.load_state() or {}).get("released") is True


@pytest.mark.hosts
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("example", "says"), [
    ("enoslib_tutorial.py", r"client-0 -> server-0: [0-9.]+ Gbit/s"),
    ("incast.py", r"12 runs ok, 0 failed; results in .*\nreport: .*report\.html"),
])
def test_examples_run_as_a_user_would(example: str, says: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / example)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=550)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert re.search(says, done.stdout), done.stdout[-2000:]
    state = yaml.safe_load(next((tmp_path / ".enosnet").glob("*/state.json")).read_text())
    assert state["released"] is True  # the block's end released every host
