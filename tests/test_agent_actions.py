"""Actions: typed parameters, whole-element substitution, optional groups, env templating, catalogue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench.drivers import default_actions
from enosnet.coordinator import SyncCoordinator, Worker, agent_config, build_agent_zipapp, netbench_actions
from enosnet.coordinator.agent.actions import ActionError, parse_action, parse_actions
from enosnet.coordinator.agent.runtime import Config, ConfigProblem
from enosnet.coordinator.zipapp import agent_zipapp_bytes
from tests.conftest import python38


def action(decl: dict[str, Any]) -> Any:
    return parse_action("a", decl)


def render(decl: dict[str, Any], values: dict[str, Any], **builtins: Any) -> tuple[list[str], dict[str, str]]:
    spec = action(decl)
    return spec.render(spec.check(values), builtins=builtins)


def test_values_are_whole_argv_elements_never_shell_text() -> None:
    argv, _ = render({"argv": ["echo", "{text}"], "params": {"text": {"type": "string", "pattern": ".*"}}},
                     {"text": "a b; rm -rf / $(id)"})
    assert argv == ["echo", "a b; rm -rf / $(id)"]
    argv, _ = render({"argv": ["echo", "x{text}", "--{text}"], "params": {"text": {"type": "string", "pattern": ".*"}}},
                     {"text": "v"})
    assert argv == ["echo", "x{text}", "--{text}"]  # only an exact placeholder is substituted


@pytest.mark.parametrize(
    ("decl", "good", "bad"),
    [
        ({"type": "int", "min": 1, "max": 10}, [1, 10], [0, 11, 2.5, "3", True]),
        ({"type": "float", "min": 0, "max": 1}, [0, 0.5, 1], [-0.1, 2, "0.5", float("nan")]),
        ({"type": "choice", "values": ["cubic", "bbr"]}, ["bbr"], ["reno", 1]),
        ({"type": "string", "pattern": "[a-z]{1,4}"}, ["abcd"], ["abcde", "AB", "", 5]),
        ({"type": "host"}, ["198.18.0.2", "::1", "server-0.example"], ["-oProxyCommand=x", "a b", "a;b", ""]),
        ({"type": "hostport"}, ["198.18.0.2:4433", "[::1]:80", "h:1"], ["h", "h:0", "h:70000", "::1:80", "-x:1"]),
        ({"type": "hostports", "max_items": 2}, [["h:1", "g:2"], []], [["h:1", "g:2", "i:3"], "h:1", ["h"]]),
        ({"type": "bool"}, [True, False], [1, "yes"]),
    ],
)
def test_parameter_types_accept_and_refuse(decl: dict[str, Any], good: list[Any], bad: list[Any]) -> None:
    spec = action({"argv": ["x", "{p}"], "params": {"p": decl}})
    for value in good:
        spec.check({"p": value})
    for value in bad:
        with pytest.raises(ActionError, match="param p"):
            spec.check({"p": value})


def test_file_parameter_names_a_file_inside_its_directory(tmp_path: Path) -> None:
    (tmp_path / "scenario.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    decl = {"type": "file", "dir": str(tmp_path), "pattern": r".*\.json"}
    spec = action({"argv": ["x", "{f}"], "params": {"f": decl}})
    assert spec.render(spec.check({"f": "scenario.json"}), builtins={})[0] == ["x", str(tmp_path / "scenario.json")]
    for value in ("../etc/passwd", "/etc/passwd", "sub", "missing.json", "..", "scenario.txt"):
        with pytest.raises(ActionError):
            spec.check({"f": value})


def test_unknown_and_missing_parameters_are_refused() -> None:
    spec = action({"argv": ["x", "{p}"], "params": {"p": {"type": "int"}}})
    with pytest.raises(ActionError, match="required"):
        spec.check({})
    with pytest.raises(ActionError, match="unknown params q"):
        spec.check({"p": 1, "q": 2})


def test_optional_groups_and_bool_flags() -> None:
    decl = {"argv": ["iperf3", ["-C", "{cc}"], ["-R", "{reverse}"], "-P", "{n}"],
            "params": {"cc": {"type": "string", "pattern": "[a-z]+", "default": None},
                       "reverse": {"type": "bool", "default": False}, "n": {"type": "int", "default": 1}}}
    assert render(decl, {})[0] == ["iperf3", "-P", "1"]
    assert render(decl, {"cc": "bbr", "reverse": True, "n": 4})[0] == ["iperf3", "-C", "bbr", "-R", "-P", "4"]


def test_env_templates_and_one_variable_per_server() -> None:
    decl = {"argv": ["drv"], "env": {"PORT": "{port}", "CLIENT_ID": "{index}", "FIXED": "yes"},
            "env_each": {"SERVER_": "servers"},
            "params": {"port": {"type": "int", "default": 4433}, "servers": {"type": "hostports"}}}
    _, env = render(decl, {"servers": ["198.18.0.2:4433", "198.18.0.3:4433"], "index": 1})
    assert env == {"PORT": "4433", "CLIENT_ID": "1", "FIXED": "yes",
                   "SERVER_0": "198.18.0.2:4433", "SERVER_1": "198.18.0.3:4433"}


def test_declarations_are_checked() -> None:
    with pytest.raises(ActionError, match="undeclared"):
        action({"argv": ["x", "{nope}"]})
    with pytest.raises(ActionError, match="built-in"):
        action({"argv": ["x"], "params": {"index": {"type": "int"}}})
    with pytest.raises(ActionError, match="pattern"):
        action({"argv": ["x"], "params": {"s": {"type": "string"}}})
    with pytest.raises(ActionError, match="argv"):
        action({"argv": []})


def test_default_catalogue_parses_and_renders_iperf3_and_netbench(tmp_path: Path) -> None:
    bins, scenarios = tmp_path / "bin", tmp_path / "scenarios"
    bins.mkdir()
    scenarios.mkdir()
    for name in ("s2n-netbench-driver-client-tcp", "s2n-netbench-driver-server-tcp"):
        (bins / name).write_text("")
    (scenarios / "incast.json").write_text("{}")
    actions = parse_actions(default_actions(netbench={"bin_dir": str(bins), "scenario_dir": str(scenarios)}))
    client = actions["iperf3-client"]
    argv, _ = client.render(client.check({"host": "198.18.0.2", "duration": 3, "parallel": 4, "congestion": "bbr"}),
                            builtins={})
    assert argv == ["iperf3", "-c", "198.18.0.2", "-p", "5201", "-t", "3", "-J", "-P", "4", "-C", "bbr"]
    nb = actions["netbench-client"]
    argv, env = nb.render(nb.check({"driver": "s2n-netbench-driver-client-tcp", "scenario": "incast.json",
                                    "servers": ["198.18.0.2:4433", "198.18.0.3:4433"], "index": 2}), builtins={})
    assert argv == [str(bins / "s2n-netbench-driver-client-tcp")]  # a driver takes everything from its environment
    assert env["CLIENT_ID"] == "2" and env["SERVER_1"] == "198.18.0.3:4433" and env["SCENARIO"].endswith("incast.json")
    assert env["TRACE"] == "throughput"
    with pytest.raises(ActionError):
        nb.check({"driver": "s2n-netbench-driver-server-tcp", "scenario": "incast.json", "servers": []})
    assert actions["netbench-server"].kind == "service" and "SERVER_ID" in netbench_actions()["netbench-server"]["env"]
    server = actions["netbench-server"]
    values = {"driver": "s2n-netbench-driver-server-tcp", "scenario": "incast.json", "port": 4500}
    assert server.listen_port(server.check({**values, "transport": "udp"})) == ("udp", 4500)
    assert server.listen_port(server.check(values)) is None  # no transport given: ready once it runs


def test_listen_declarations_are_checked() -> None:
    service = {"kind": "service", "argv": ["srv"], "params": {"port": {"type": "int", "min": 1, "max": 65535}}}
    assert parse_action("s", {**service, "listen": "tcp:{port}"}).listen_port({"port": 80}) == ("tcp", 80)
    with pytest.raises(ActionError, match="listen must be"):
        parse_action("s", {**service, "listen": "sctp:{port}"})
    with pytest.raises(ActionError, match="listen names undeclared params proto"):
        parse_action("s", {**service, "listen": "{proto}:{port}"})


def test_agent_config_is_flat_json_the_agent_accepts(tmp_path: Path) -> None:
    cfg = agent_config("client-0", role="client", secret="0123456789abcdef0123", env_id="e",
                       actions=default_actions(), workdir=str(tmp_path))
    parsed = Config(json.loads(json.dumps(cfg)))
    assert (parsed.worker_id, parsed.port) == ("client-0", 7700)
    assert {"iperf3-client", "iperf3-server", "iperf3-client-build", "netbench-client"} <= set(parsed.actions)
    assert all(not isinstance(v, dict) for k, v in cfg.items() if k != "actions")
    with pytest.raises(ConfigProblem, match="secret"):
        Config({**cfg, "secret": "short"})
    with pytest.raises(ConfigProblem, match="missing field workdir"):
        Config({k: v for k, v in cfg.items() if k != "workdir"})


def test_zipapp_is_reproducible_stdlib_only_and_runs(tmp_path: Path) -> None:
    first = build_agent_zipapp(tmp_path / "a.pyz")
    mtime = first.stat().st_mtime_ns
    assert build_agent_zipapp(first) == first and first.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    assert first.read_bytes() == agent_zipapp_bytes()
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps(agent_config("w", role="r", secret="x" * 32, env_id="e", actions=default_actions(),
                                           workdir=str(tmp_path / "w"))))
    # -I -S: no site-packages, no user paths: only the standard library is importable
    done = subprocess.run([sys.executable, "-I", "-S", str(first), "--config", str(cfg), "--check"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run([sys.executable, "-I", "-S", str(first), "--config", str(bad), "--check"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "missing field" in done.stderr


def test_agent_sources_use_nothing_newer_than_python_3_8() -> None:
    import ast

    folder = Path(__file__).parents[1] / "enosnet" / "coordinator" / "agent"
    for path in folder.glob("*.py"):
        source = path.read_text()
        assert "from __future__ import annotations" in source or path.name == "__init__.py", path
        tree = ast.parse(source, feature_version=(3, 8))
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"removeprefix", "removesuffix", "pidfd_open", "bit_count"}, path
        imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                   for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
        assert "enosnet" not in imports, path


def test_no_iperf3_parameter_names_a_path_on_the_host() -> None:
    client = parse_actions(default_actions())["iperf3-client"]
    with pytest.raises(ActionError, match="unknown"):
        client.check({"host": "198.18.0.2", "logfile": "/etc/../root/.bashrc"})


@pytest.mark.parametrize(
    ("decl", "bad"),
    [
        ({"type": "host"}, ["server-0\n", "198.18.0.2\n"]),
        ({"type": "hostport"}, ["h:\u0661\u0662", "h:\uff18\uff10", "h:80\n"]),
        ({"type": "string", "pattern": "[a-z]{1,4}"}, ["abc\n"]),
    ],
)
def test_a_trailing_newline_or_a_non_ascii_digit_is_refused(decl: dict[str, Any], bad: list[Any]) -> None:
    spec = action({"argv": ["x", "{p}"], "params": {"p": decl}})
    for value in bad:
        with pytest.raises(ActionError, match="param p"):
            spec.check({"p": value})


def test_file_names_and_declarations_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    (tmp_path / "scenario.json").write_text("{}")
    spec = action({"argv": ["x", "{f}"], "params": {"f": {"type": "file", "dir": str(tmp_path)}}})
    with pytest.raises(ActionError, match="plain file name"):
        spec.check({"f": "scenario.json\n"})
    with pytest.raises(ActionError, match="action name"):
        parse_action("a\n", {"argv": ["true"]})
    with pytest.raises(ActionError, match="listen"):
        parse_action("a", {"argv": ["true"], "listen": "tcp:80\n"})
    with pytest.raises(ActionError, match="listen"):
        parse_action("a", {"argv": ["true"], "listen": "tcp:\u0668\u0660"})


def test_agent_state_reaches_the_disk_before_it_replaces_the_old(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from enosnet.coordinator.agent import runtime

    events: list[str] = []
    real_fsync, real_replace = runtime.os.fsync, runtime.os.replace
    monkeypatch.setattr(runtime.os, "fsync", lambda fd: (events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}"),
                                                         real_fsync(fd))[1])
    monkeypatch.setattr(runtime.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    runtime.write_json(str(tmp_path / "state.json"), {"runs": []})
    assert events == [f"fsync {tmp_path}/state.json.tmp", "replace", f"fsync {tmp_path}"]
    assert json.loads((tmp_path / "state.json").read_text()) == {"runs": []}


OLDEST = python38()


@pytest.mark.skipif(OLDEST is None, reason="no python3.8 on this machine")
def test_the_agent_zipapp_serves_a_run_under_python_38(tmp_path: Path) -> None:
    """Hosts may have Python 3.8: the shipped agent answers, runs a job on schedule and reports under it."""
    secret, port = "5" * 32, free_udp_port()
    config = agent_config("old-0", role="client", secret=secret, env_id="py38", port=port, bind="127.0.0.1",
                          workdir=str(tmp_path / "work"),
                          actions={"say": {"kind": "job", "argv": ["echo", "hello"], "params": {}}})
    (tmp_path / "agent.json").write_text(json.dumps(config))
    agent = subprocess.Popen([str(OLDEST), str(build_agent_zipapp(tmp_path)), "--config", str(tmp_path / "agent.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with SyncCoordinator([Worker("old-0", "client", "127.0.0.1", port)], env_id="py38", secret=secret) as c:
            c.ready()
            [record] = c.run("client", "say")
        assert record.ok and record.stdout is not None, record
        assert Path(record.stdout).read_text() == "hello\n"
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err.decode()[-2000:]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
