"""The experiment file, the plan and the dry run: validation with file:line, sweeps, order, filters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enosnet.bench.plan import make_plan
from enosnet.bench.spec import load_experiment, parse_experiment, substitute
from enosnet.cli import app
from enosnet.errors import ConfigError, UsageError

INCAST = Path(__file__).parents[1] / "examples" / "incast.yaml"


def test_the_example_is_valid_and_makes_twelve_runs() -> None:
    spec = load_experiment(INCAST)
    plan = make_plan(spec)
    assert (spec.duration_s, len(plan.runs), plan.seed, plan.order) == (3.0, 12, 7, "shuffled")
    assert sorted({(r.params["cc"], r.params["delay"]) for r in plan.runs}) == [
        ("cubic", "0ms"), ("cubic", "20ms"), ("reno", "0ms"), ("reno", "20ms")]
    assert sorted(r.position for r in plan.runs) == list(range(12))
    assert len({r.key for r in plan.runs}) == 12


def test_shuffled_order_is_reproducible_from_the_seed_and_changes_with_it() -> None:
    text = "name: x\nrepetitions: 4\nseed: {seed}\nparameters: {{cc: [cubic, reno], d: [0ms, 10ms]}}\n"
    first = [r.key for r in make_plan(parse_experiment(text.format(seed=1))).runs]
    again = [r.key for r in make_plan(parse_experiment(text.format(seed=1))).runs]
    other = [r.key for r in make_plan(parse_experiment(text.format(seed=2))).runs]
    assert first == again and first != other and sorted(first) == sorted(other)


def test_without_a_seed_the_order_derives_from_the_file_so_a_resume_finds_it() -> None:
    text = "name: x\nrepetitions: 3\nparameters: {cc: [cubic, reno]}\n"
    a, b = make_plan(parse_experiment(text)), make_plan(parse_experiment(text))
    assert a.seed == b.seed and [r.key for r in a.runs] == [r.key for r in b.runs]


def test_as_written_interleaves_repetitions() -> None:
    spec = parse_experiment("name: x\nrepetitions: 2\norder: as-written\nparameters: {a: [1, 2], b: [x, y]}\n")
    assert [(r.params["a"], r.params["b"], r.repetition) for r in make_plan(spec).runs] == [
        (1, "x", 0), (1, "y", 0), (2, "x", 0), (2, "y", 0), (1, "x", 1), (1, "y", 1), (2, "x", 1), (2, "y", 1)]


def test_zip_pairs_lists_instead_of_crossing_them() -> None:
    spec = parse_experiment("name: x\nparameters:\n  cc: [cubic, reno]\n  zip: {rate: [1g, 10g], buf: [1M, 8M]}\n")
    assert spec.combinations() == [
        {"cc": "cubic", "rate": "1g", "buf": "1M"}, {"cc": "cubic", "rate": "10g", "buf": "8M"},
        {"cc": "reno", "rate": "1g", "buf": "1M"}, {"cc": "reno", "rate": "10g", "buf": "8M"}]


def test_substitution_keeps_types_of_whole_placeholders() -> None:
    spec = parse_experiment("name: x\nparameters: {p: [1, 4], cc: [reno]}\n"
                            "iperf3: {parallel: '{p}', congestion: '{cc}'}\nnetem: {between: [client, server], "
                            "delay: '{p}ms'}\n")
    assert spec.driver_section({"p": 4, "cc": "reno"})["parallel"] == 4
    assert spec.netem_section({"p": 4, "cc": "reno"})["delay"] == "4ms"  # type: ignore[index]
    assert substitute(["{a}", "x{a}"], {"a": 2}) == [2, "x2"]


@pytest.mark.parametrize(("text", "where", "reason"), [
    ("name: x\nduration: 3q\n", "exp.yaml:2 duration", "not a duration"),
    ("name: x\nparameters:\n  zip: {a: [1, 2], b: [3]}\n", "exp.yaml:2 parameters", "same length"),
    ("name: x\niperf3: {congestion: '{cx}'}\n", "exp.yaml:1", "{cx} names no parameter"),
    ("name: x\ndriver: netperf\n", "exp.yaml:2 driver", "unknown driver 'netperf' (drivers: iperf3, netbench"),
    ("name: x\nrepetitions: 0\n", "exp.yaml:2 repetitions", "greater than or equal to 1"),
    ("name: x\nbogus: 1\n", "exp.yaml:2 bogus", "unknown field"),
    ("name: x\ndriver: netbench\n", "exp.yaml:1", "needs a `netbench:` section"),
])
def test_errors_name_file_line_and_field(text: str, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_experiment(text, "exp.yaml")
    assert where in str(caught.value) and reason in str(caught.value)


def test_only_filters_keep_positions_and_reject_unknown_parameters() -> None:
    spec = load_experiment(INCAST)
    full = make_plan(spec)
    only = make_plan(spec, only=["delay=0ms", "cc=reno", "cc=cubic"])
    assert len(only.runs) == 6 and all(r.params["delay"] == "0ms" for r in only.runs)
    assert [r.position for r in only.runs] == [r.position for r in full.runs if r.params["delay"] == "0ms"]
    with pytest.raises(UsageError, match="no parameter 'rate'"):
        make_plan(spec, only=["rate=1g"])
    with pytest.raises(UsageError, match="no run matches"):
        make_plan(spec, only=["delay=5ms"])


def test_netbench_drivers_are_compared_as_a_parameter(tmp_path: Path) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text('{"servers": [{}], "clients": [{}]}')
    path = tmp_path / "nb.yaml"
    path.write_text("name: nb\ndriver: netbench\nnetbench: {scenario: s.json, drivers: [tcp, s2n-quic]}\n")
    spec = load_experiment(path)
    assert spec.netbench is not None and spec.netbench.scenario == str(scenario)
    assert [c["driver"] for c in spec.combinations()] == ["tcp", "s2n-quic"]
    assert spec.driver_section({"driver": "s2n-quic"})["driver"] == "s2n-quic"
    path.write_text("name: nb\ndriver: netbench\nnetbench: {scenario: missing.json}\n")
    with pytest.raises(ConfigError, match=r"nb.yaml:3 netbench.scenario: no such file"):
        load_experiment(path)


def test_dry_run_lists_runs_and_estimate_without_an_environment() -> None:
    result = CliRunner().invoke(app, ["bench", str(INCAST), "--dry-run", "--only", "cc=reno"])
    assert result.exit_code == 0, result.output
    assert "6 runs, order shuffled, seed 7" in result.output
    assert result.output.count("cc=reno") == 6 and "estimated time: 0 min 27 s" in result.output


def test_a_baseline_names_a_parameter_and_one_of_its_levels() -> None:
    base = "name: b\nparameters: {delay: [0ms, 20ms, 50ms]}\n"
    assert parse_experiment(base + "baseline: {delay: 20ms}\n").baseline == {"delay": "20ms"}
    with pytest.raises(ConfigError, match=r"baseline: rate is no parameter \(parameters: delay\)"):
        parse_experiment(base + "baseline: {rate: 1G}\n")
    with pytest.raises(ConfigError, match=r"baseline: delay=5ms is not one of its levels \(0ms, 20ms, 50ms\)"):
        parse_experiment(base + "baseline: {delay: 5ms}\n")


BUILDS = ("name: b\ndriver: netbench\nrepetitions: {reps}\nseed: {seed}\nparameters: {{delay: [0ms, 20ms]}}\n"
          "netbench: {{scenario: s.json, drivers: [tcp]}}\n"
          "builds:\n  base: {{crates: {{s2n-netbench-driver-tcp: 0.1.0}}}}\n  mine: {{path: ../checkout}}\n")


def test_builds_are_a_parameter_whose_levels_run_back_to_back_in_every_repetition() -> None:
    spec = parse_experiment(BUILDS.format(reps=6, seed=3))
    assert spec.parameter_names == ["delay", "driver", "build"]
    runs = make_plan(spec).runs
    assert len(runs) == 24
    orders = set()
    for rep in range(6):
        block = [r for r in runs if r.repetition == rep]
        assert sorted((r.params["delay"], r.params["build"]) for r in block) == [
            ("0ms", "base"), ("0ms", "mine"), ("20ms", "base"), ("20ms", "mine")]  # every combination, once
        for first, second in (block[0:2], block[2:4]):  # a combination's two builds, one right after the other
            assert first.params["delay"] == second.params["delay"] and first.position + 1 == second.position
            orders.add((first.params["build"], second.params["build"]))
    assert orders == {("base", "mine"), ("mine", "base")}  # which build goes first is random, not fixed
    assert [r.key for r in make_plan(parse_experiment(BUILDS.format(reps=6, seed=3))).runs] == [r.key for r in runs]
    section = spec.driver_section({"delay": "0ms", "build": "mine"})
    assert section["build"] == {"label": "mine", "crates": None, "path": "../checkout", "packages": [], "dir": None,
                                "binary": None}
    assert spec.driver_section({"delay": "0ms", "build": "base"})["build"]["crates"] == {
        "s2n-netbench-driver-tcp": "0.1.0"}
    assert parse_experiment(BUILDS.format(reps=1, seed=1) + "baseline: {build: mine}\n").baseline == {"build": "mine"}


@pytest.mark.parametrize(("change", "reason"), [
    ("driver: netbench", "builds.base: a crates build cannot run with driver iperf3 (it takes binary or dir)"),
    ("parameters: {delay: [0ms, 20ms]}", "do not give `build` in parameters too"),
    ("mine: {path: ../checkout}", "give exactly one of `crates`"),
    ("base: {crates: {s2n-netbench-driver-tcp: 0.1.0}}", "`packages` goes with `path`"),
    ("  mine: {path: ../checkout}\n", "baseline: build=other is not one of its levels"),
])
def test_a_wrong_builds_section_is_refused_before_anything_runs(change: str, reason: str) -> None:
    text = BUILDS.format(reps=1, seed=1)
    text = text.replace(change, {
        "driver: netbench": "driver: iperf3",
        "parameters: {delay: [0ms, 20ms]}": "parameters: {delay: [0ms, 20ms], build: [a, b]}",
        "mine: {path: ../checkout}": "mine: {path: ../checkout, dir: /opt/bin}",
        "base: {crates: {s2n-netbench-driver-tcp: 0.1.0}}": "base: {dir: /opt/bin, packages: [x]}",
        "  mine: {path: ../checkout}\n": "  mine: {path: ../checkout}\nbaseline: {build: other}\n",
    }[change])
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse_experiment(text)
