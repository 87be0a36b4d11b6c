"""The experiment file: what to run, how often, in which order, with which parameters.

Validated before anything runs; errors name file, line and field::

    name: incast
    driver: iperf3                 # iperf3 | netbench
    duration: 3s
    repetitions: 3
    order: shuffled                # or as-written; the seed is recorded
    seed: 7
    parameters:                    # cross product; `zip:` for paired lists
      cc: [cubic, reno]
      delay: [0ms, 20ms]
    netem: {between: [client, server], delay: "{delay}"}
    iperf3: {server_role: server, client_role: client, congestion: "{cc}", parallel: 1}

``{name}`` in the ``netem`` and driver sections is replaced by that run's
parameter value (a string that is exactly ``{name}`` takes the value's type).

>>> spec = parse_experiment("name: x\\nduration: 2s\\nparameters: {cc: [cubic, reno]}\\n"
...                         "iperf3: {congestion: '{cc}'}")
>>> spec.duration_s, [c["cc"] for c in spec.combinations()]
(2.0, ['cubic', 'reno'])
>>> spec.driver_section({"cc": "reno"})["congestion"]
'reno'
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from enosnet.errors import ConfigError
from enosnet.yamlfile import line_map, load_model_text, where

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")]
BuildLabel = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
Scalar = str | int | float | bool
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "us": 1e-6}


def parse_seconds(value: Any) -> float:
    """``3s``, ``500ms``, ``2m`` or a plain number of seconds → seconds.

    >>> parse_seconds("500ms"), parse_seconds(3), parse_seconds("1.5 s")
    (0.5, 3.0, 1.5)
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s or 500ms")
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 10s or 500ms")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


Seconds = Annotated[float, BeforeValidator(parse_seconds)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetemSection(Strict):
    """Emulated network conditions between two groups of roles (applied per run, cleared after)."""

    between: tuple[str, str]
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None
    rate: str | None = None
    symmetric: bool = True


SOURCES = ("crates", "path", "binary", "dir")


class BuildSpec(Strict):
    """One build of the tool under test, from exactly one source.

    For netbench: ``crates`` (crate → exact version, built on the controller,
    cached per machine) or ``path`` (a local checkout: a driver crate, or a
    workspace and its ``packages``, built on the controller). For iperf3:
    ``binary`` (an iperf3 executable on the controller). For both: ``dir`` (a
    folder of prebuilt binaries). Relative paths are relative to the
    experiment file.
    """

    crates: dict[str, str] | None = None
    path: str | None = None
    packages: list[str] = Field(default_factory=list)
    dir: str | None = None
    binary: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BuildSpec:
        given = [name for name in SOURCES if getattr(self, name)]
        if len(given) != 1:
            got = f"; got {' and '.join(given)}" if given else ""
            raise ValueError("give exactly one of `crates` (crate: version), `path` (a checkout), `binary` (an "
                             f"executable) or `dir` (prebuilt binaries){got}")
        if self.packages and self.path is None:
            raise ValueError("`packages` goes with `path` (the workspace's packages to build)")
        return self


class LabelledBuild(BuildSpec):
    """A build as one run's driver section carries it: its label in ``builds:`` and its source."""

    label: BuildLabel


class Iperf3Section(Strict):
    """iperf3: one server per server host (one port per client sharing it), clients started together."""

    server_role: str = "server"
    client_role: str = "client"
    congestion: str | None = None
    parallel: int | str = 1
    reverse: bool | str = False
    udp: bool | str = False
    bitrate: str | None = None
    length: str | None = None
    port: int = Field(5201, ge=1, le=65000)
    # where a build of `builds:` goes on the hosts (as iperf3+<label>), as the agents' catalogue says
    bin_dir: str = "/usr/local/bin"
    build: LabelledBuild | None = None


class NetbenchScenarioArgs(Strict):
    """Arguments for ``s2n-netbench-scenarios`` (used when no scenario file is given)."""

    name: str = "request_response"
    options: dict[str, Scalar] = Field(default_factory=dict)
    program: str = "s2n-netbench-scenarios"


class NetbenchSection(Strict):
    """s2n-netbench: a scenario and the drivers to compare (see docs/netbench.md).

    ``bin_dir`` is where the hosts' drivers are (the agents' catalogue says the
    same); a build of ``builds:`` goes there beside them, each binary named
    ``<binary>+<label>``. ``build`` is set per run from ``builds:``, and
    ``driver`` (the run's netbench driver) from the ``driver`` parameter,
    else the first of ``drivers``.
    """

    scenario: str | None = None
    generate: NetbenchScenarioArgs | None = None
    drivers: list[str] = Field(default_factory=lambda: ["tcp"], min_length=1)
    server_role: str = "server"
    client_role: str = "client"
    port: int = Field(4433, ge=1, le=65535)
    scenario_dir: str = "/var/lib/enosnet/scenarios"
    bin_dir: str = "/usr/local/bin"
    build: LabelledBuild | None = None
    driver: str | None = None

    @property
    def run_driver(self) -> str:
        """The netbench driver this run uses (``tcp``, ``s2n-quic``, …)."""
        return self.driver or self.drivers[0]

    @model_validator(mode="after")
    def _one_source(self) -> NetbenchSection:
        if (self.scenario is None) == (self.generate is None):
            raise ValueError("give exactly one of `scenario` (a file) or `generate` (s2n-netbench-scenarios args)")
        return self


class ChecksSection(Strict):
    """Bounds the environment must meet before the first run."""

    max_clock_offset: Seconds = 0.05
    max_rtt: Seconds = 0.01
    rtt_tolerance: Seconds = 0.005
    rtt_tolerance_ratio: float = Field(0.2, ge=0)
    netem: bool = True


class Experiment(Strict):
    """A whole experiment file."""

    name: Name
    driver: str = "iperf3"  # a registered driver (enosnet.bench.drivers)
    duration: Seconds = 10.0
    repetitions: int = Field(1, ge=1, le=100_000)
    order: Literal["shuffled", "as-written"] = "shuffled"
    seed: int | None = Field(None, ge=0, le=2**62)
    parameters: dict[str, Any] = Field(default_factory=dict)
    netem: NetemSection | None = None
    iperf3: Iperf3Section | None = None
    netbench: NetbenchSection | None = None
    checks: ChecksSection = Field(default_factory=ChecksSection)
    timeout: Seconds | None = None
    # the level each other level of a parameter is compared against in the report (default: its first)
    baseline: dict[str, Any] = Field(default_factory=dict)
    # builds of the tool under test compared side by side: an axis `build` of the plan, labels as levels
    builds: dict[BuildLabel, BuildSpec] = Field(default_factory=dict)
    # the sections of drivers other than enosnet's own, by driver name (``mytool:`` in the file)
    sections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source_hash: str = Field("", exclude=True)
    source_path: str | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _driver_sections(cls, data: Any) -> Any:
        """A registered driver's section (``mytool:``) goes to ``sections``; any other unknown key stays unknown."""
        from enosnet.bench.drivers import driver_names

        if not isinstance(data, dict):
            return data
        found = {k: data[k] for k in driver_names() if k in data and k not in cls.model_fields}
        if not found:
            return data
        return {**{k: v for k, v in data.items() if k not in found}, "sections": {**data.get("sections", {}), **found}}

    @field_validator("driver")
    @classmethod
    def _registered(cls, value: str) -> str:
        from enosnet.bench.drivers import driver_names

        if value not in driver_names():
            raise ValueError(f"unknown driver {value!r} (drivers: {', '.join(driver_names())})")
        return value

    @field_validator("duration")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        _axes(value)
        return value

    @model_validator(mode="after")
    def _sections(self) -> Experiment:
        if self.driver == "netbench" and self.netbench is None:
            raise ValueError("driver netbench needs a `netbench:` section")
        from enosnet.bench.drivers import driver_class

        for name, given in self.sections.items():  # a plug-in driver's section, by its own model
            try:
                driver_class(name).section_model.model_validate(given)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"{'.'.join(map(str, (name, *first['loc'])))}: {first['msg']}") from None
        names = set(self.parameter_names)
        written = {"netem": self.netem, "iperf3": self.iperf3, "netbench": self.netbench, **self.sections}
        for section, data in written.items():
            if data is not None:
                found = _placeholders(data.model_dump() if isinstance(data, BaseModel) else data)
                unknown = sorted(set(found) - names - {"duration"})
                if unknown:
                    raise ValueError(f"{section}: {{{unknown[0]}}} names no parameter "
                                     f"(parameters: {', '.join(sorted(names)) or 'none'})")
        runs = driver_class(self.driver).build_sources
        for label, build in self.builds.items():
            source = next(name for name in SOURCES if getattr(build, name))
            if source not in runs:
                raise ValueError(f"builds.{label}: a {source} build cannot run with driver {self.driver} (it takes "
                                 f"{' or '.join(runs) or 'no builds'})")
        if self.builds and "build" in self.parameters:
            raise ValueError("builds: the labels of `builds` are the levels of parameter build; "
                             "do not give `build` in parameters too")
        levels = {n: [v[i] for v in values] for names_, values in _axes(self.parameters)
                  for i, n in enumerate(names_)}
        if self.builds:
            levels["build"] = list(self.builds)
        for name, level in self.baseline.items():
            if name not in levels:
                raise ValueError(f"baseline: {name} is no parameter (parameters: {', '.join(sorted(names)) or 'none'})")
            if level not in levels[name]:
                raise ValueError(f"baseline: {name}={level} is not one of its levels "
                                 f"({', '.join(str(v) for v in levels[name])})")
        return self

    # ── derived values ──────────────────────────────────────────────────────

    @property
    def duration_s(self) -> float:
        return float(self.duration)

    @property
    def parameter_names(self) -> list[str]:
        names = [name for axis in _axes(self.parameters) for name in axis[0]]
        return names + (["driver"] if self._driver_axis else []) + (["build"] if self.builds else [])

    @property
    def _driver_axis(self) -> bool:
        """netbench compares its ``drivers`` as if they were a parameter named ``driver``."""
        return self.driver == "netbench" and self.netbench is not None and "driver" not in self.parameters

    @property
    def effective_seed(self) -> int:
        """The seed given, else one derived from the file's content (so a resume finds the same order)."""
        if self.seed is not None:
            return self.seed
        return int(self.file_hash[:12], 16)

    @property
    def file_hash(self) -> str:
        if self.source_hash:
            return self.source_hash
        text = self.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()

    def combinations(self) -> list[dict[str, Any]]:
        """Every parameter combination, in file order (the last axis varies fastest)."""
        axes = _axes(self.parameters)
        combos = []
        for picks in itertools.product(*(values for _, values in axes)):
            combo: dict[str, Any] = {}
            for (names, _), pick in zip(axes, picks, strict=True):
                combo.update(zip(names, pick, strict=True))
            combos.append(combo)
        if self._driver_axis and self.netbench is not None:
            combos = [{**combo, "driver": name} for combo in combos for name in self.netbench.drivers]
        if self.builds:
            combos = [{**combo, "build": label} for combo in combos for label in self.builds]
        return combos

    def driver_section(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The driver's section with this run's parameters substituted."""
        from enosnet.bench.drivers import driver_class

        model = driver_class(self.driver).section_model
        given = getattr(self, self.driver, None) if self.driver in type(self).model_fields else None
        data = (given if isinstance(given, BaseModel) else model.model_validate(self.sections.get(self.driver, {})))\
            .model_dump()
        if self.driver == "netbench" and self.netbench is not None:
            data["driver"] = params.get("driver", self.netbench.drivers[0])
        data.pop("build", None)
        out = dict(substitute(data, {**params, "duration": self.duration_s}))
        label = params.get("build")
        if label in self.builds:  # after substituting: a build's paths are not templates
            out["build"] = {"label": label, **self.builds[label].model_dump()}
        return out

    def netem_section(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The netem section with this run's parameters substituted (``None``: no netem)."""
        if self.netem is None:
            return None
        return dict(substitute(self.netem.model_dump(), params))


def _axes(parameters: Mapping[str, Any]) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
    """Parameters as product axes: a plain list is one axis; a ``zip:`` group is one axis of tuples."""
    axes: list[tuple[list[str], list[tuple[Any, ...]]]] = []
    seen: set[str] = set()
    for name, values in parameters.items():
        if name == "zip":
            groups = values if isinstance(values, list) else [values]
            for group in groups:
                axes.append(_zip_axis(group))
        else:
            axes.append(([_param_name(name)], [(v,) for v in _values(name, values)]))
    for names, _ in axes:
        for name in names:
            if name in seen:
                raise ValueError(f"parameter {name} is given twice")
            seen.add(name)
    return axes


def _zip_axis(group: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    if not isinstance(group, dict) or not group:
        raise ValueError("zip: expects a mapping of parameter → list (lists of equal length)")
    lists = {_param_name(k): _values(k, v) for k, v in group.items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) != 1:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
        raise ValueError(f"zip: lists must have the same length ({sizes})")
    return list(lists), list(zip(*lists.values(), strict=True))


def _param_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", name):
        raise ValueError(f"parameter name {name!r}: use letters, digits and _ (not starting with a digit)")
    return name


def _values(name: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise ValueError(f"parameter {name}: needs at least one value")
    for value in values:
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"parameter {name}: values must be strings or numbers, not {type(value).__name__}")
    if len({repr(v) for v in values}) != len(values):
        raise ValueError(f"parameter {name}: values repeat")
    return list(values)


def _placeholders(data: Any) -> list[str]:
    if isinstance(data, str):
        return PLACEHOLDER.findall(data)
    if isinstance(data, dict):
        return [n for v in data.values() for n in _placeholders(v)]
    if isinstance(data, list | tuple):
        return [n for v in data for n in _placeholders(v)]
    return []


def substitute(data: Any, params: Mapping[str, Any]) -> Any:
    """``{name}`` → the parameter's value, recursively; a string that is exactly ``{name}`` keeps the type.

    >>> substitute({"delay": "{d}", "note": "at {d}", "n": "{n}"}, {"d": "20ms", "n": 2})
    {'delay': '20ms', 'note': 'at 20ms', 'n': 2}
    """
    if isinstance(data, str):
        whole = PLACEHOLDER.fullmatch(data)
        if whole and whole.group(1) in params:
            return params[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(params.get(m.group(1), m.group(0))), data)
    if isinstance(data, dict):
        return {k: substitute(v, params) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(substitute(v, params) for v in data)
    return data


def parse_experiment(text: str, source: str = "<experiment>") -> Experiment:
    """Validate an experiment given as YAML text; raises ``ConfigError`` naming file:line and field."""
    spec = load_model_text(Experiment, text, source=source)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return spec.model_copy(update={"source_hash": digest, "source_path": None if source.startswith("<") else source})


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; raises ``ConfigError`` naming file:line and field.

    A relative ``netbench.scenario`` is resolved against the file's folder.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment file: {exc.strerror}") from None
    spec = parse_experiment(text, str(path))
    if spec.netbench is not None and spec.netbench.scenario is not None:
        scenario = Path(spec.netbench.scenario)
        if not scenario.is_absolute():
            scenario = (path.parent / scenario).resolve()
        if not scenario.is_file():
            lines = line_map(text)
            raise ConfigError(f"{path}: invalid configuration",
                              [(where(str(path), lines, ("netbench", "scenario")), f"no such file: {scenario}")])
        section = spec.netbench.model_copy(update={"scenario": str(scenario)})
        spec = spec.model_copy(update={"netbench": section})
    return spec
