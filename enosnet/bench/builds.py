"""Builds of the tool under test, side by side on the hosts: built on the controller, pushed under their label.

An experiment's ``builds:`` names builds (netbench: ``crates`` at versions or
a ``path`` checkout; iperf3: a ``binary``; either: a ``dir`` of prebuilt
binaries). Before the first run each is built once on the controller
(``netbench_build``: cached per machine; a checkout is rebuilt incrementally)
and the binaries the runs need are copied to every host as
``<bin_dir>/<binary>+<label>``, never over another build's files. What a
run ran is then known exactly: its build's label, source and version, and the
sha256 of each binary as the host holds it.

>>> installed_name("s2n-netbench-driver-client-tcp", "mine")
's2n-netbench-driver-client-tcp+mine'
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from enosnet.bench.spec import LabelledBuild
from enosnet.errors import ConfigError
from enosnet.model import Host
from enosnet.netbench_build import BuildError, build
from enosnet.remote.results import HostResult, Results, Status
from enosnet.remote.session import Session, fan_out
from enosnet.results.store import HostMeta

Progress = Callable[[str], None]


@dataclass(frozen=True)
class InstalledBuild:
    """A build as it is on the hosts: where it came from, and each installed binary's sha256."""

    label: str
    source: str
    version: str
    sha256: dict[str, str]  # installed file name (with +label) → digest, the same on every host


@dataclass
class _Needs:
    """What the runs of one build need: its binaries on its hosts, in ``bin_dir``."""

    spec: LabelledBuild
    bin_dir: str
    binaries: set[str] = field(default_factory=set)
    hosts: set[Host] = field(default_factory=set)


Wanted = tuple[LabelledBuild, str, Iterable[str], Iterable[Host]]
"""One run's build, its ``bin_dir``, the binaries the run starts and the hosts it runs on."""


def install_builds(session: Session, runs: Iterable[Wanted], *, experiment: str | None) -> dict[str, InstalledBuild]:
    """Every build the runs name, once, with all their binaries on all their hosts (paths from the ``experiment``)."""
    needs: dict[str, _Needs] = {}
    for spec, bin_dir, binaries, hosts in runs:
        need = needs.setdefault(spec.label, _Needs(spec, bin_dir))
        need.binaries.update(binaries)
        need.hosts.update(hosts)
    base = Path(experiment).parent if experiment else Path.cwd()
    return {label: install_build(session, sorted(n.hosts, key=lambda h: h.name), n.spec, binaries=sorted(n.binaries),
                                 bin_dir=n.bin_dir, base=base) for label, n in needs.items()}


def installed_name(binary: str, label: str) -> str:
    """The file name a build's binary gets on the hosts."""
    return f"{binary}+{label}"


def install_build(session: Session, hosts: Sequence[Host], spec: LabelledBuild, *, binaries: Sequence[str],
                  bin_dir: str, base: Path, on_output: Progress | None = None) -> InstalledBuild:
    """Build ``spec`` on the controller (or take its prebuilt ``dir``) and put ``binaries`` on every host.

    A host that already holds a binary with the same sha256 gets nothing; each
    copy is checked by its sha256 on the host. Raises ``ConfigError`` when the
    build lacks a binary the experiment runs, ``HostsFailed`` (per-host results) when a copy fails.
    """
    files, source, version = _controller_binaries(spec, binaries, base=base, on_output=on_output)
    digests = {installed_name(b, spec.label): _sha256(path) for b, path in files.items()}
    local = {installed_name(b, spec.label): path for b, path in files.items()}

    def put(host: Host) -> HostResult:
        have = _host_digests(session, host, bin_dir, list(digests))
        missing = [name for name in digests if have.get(name) != digests[name]]
        if not missing:
            return HostResult(host, Status.OK)
        for name in missing:
            target = shlex.quote(f"{bin_dir}/{name}")
            staged = shlex.quote(f"{bin_dir}/.{name}.new")
            out = session.run(host, f"mkdir -p {shlex.quote(bin_dir)} && cat > {staged} && chmod 755 {staged} && "
                                    f"mv -f {staged} {target}", stdin=local[name].read_bytes(), timeout=120)
            if not out.ok:
                return replace(out, message=f"copying {name}: {out.message}")
        have = _host_digests(session, host, bin_dir, list(digests))
        wrong = [name for name in digests if have.get(name) != digests[name]]
        if wrong:
            return HostResult(host, Status.FAILED, message=f"{', '.join(wrong)} differ from the build after the copy")
        return HostResult(host, Status.OK)

    Results(fan_out(list(hosts), put)).raise_for_failures(f"installing build {spec.label}")
    return InstalledBuild(spec.label, source, version, digests)


def _controller_binaries(spec: LabelledBuild, binaries: Sequence[str], *, base: Path,
                         on_output: Progress | None) -> tuple[dict[str, Path], str, str]:
    """Each of ``binaries`` as a file on the controller, the build's source in words, and its version."""
    where = f"builds.{spec.label}"
    if spec.binary:
        program = (base / spec.binary).resolve()
        if not program.is_file() or len(binaries) != 1:
            raise ConfigError(f"{where}.binary: {program} is no file" if len(binaries) == 1 else
                              f"{where}.binary: one executable cannot stand for {', '.join(binaries)}")
        return {binaries[0]: program}, f"binary {program}", _program_version(program)
    try:
        if spec.crates:
            built = build(dict(spec.crates), on_output=on_output)
            crates = " ".join(f"{crate} {version}" for crate, version in sorted(spec.crates.items()))
            folder, source = built.bin_dir, f"crates {crates}"
            version = ", ".join(sorted(set(spec.crates.values())))
        elif spec.path:
            checkout = (base / spec.path).resolve()
            if not checkout.is_dir():
                raise ConfigError(f"{where}.path: {checkout} is no folder")
            built = build(path=checkout, packages=spec.packages, on_output=on_output)
            folder, source = built.bin_dir, f"path {checkout} ({git_state(checkout)})"
            version = _cargo_version(checkout)
        else:
            assert spec.dir is not None
            folder = (base / spec.dir).resolve()
            if not folder.is_dir():
                raise ConfigError(f"{where}.dir: {folder} is no folder")
            source, version = f"dir {folder}", "prebuilt"
    except BuildError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    missing = [b for b in binaries if not (folder / b).is_file()]
    if missing:
        raise ConfigError(f"{where}: {folder} has no {', '.join(missing)} (what the experiment's runs start)")
    return {b: folder / b for b in binaries}, source, version


def _program_version(program: Path) -> str:
    """The first line ``program --version`` prints here (``iperf 3.12 (cJSON 1.7.15)``), else ``unknown``."""
    try:
        done = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].strip()[:120] if done.returncode == 0 and first else "unknown"


def build_metadata(build: InstalledBuild, host: str, binary: str) -> list[HostMeta]:
    """What build a host ran in a run: its label, source and version, and the sha256 of the binary it ran."""
    name = installed_name(binary, build.label)
    return [HostMeta(host, "build", build.label, "controller"),
            HostMeta(host, "build.source", build.source, "controller"),
            HostMeta(host, "build.version", build.version, "controller"),
            HostMeta(host, "build.binary", name, "controller"),
            HostMeta(host, "build.sha256", build.sha256[name], "host")]


def git_state(folder: Path) -> str:
    """``git <commit>`` with ``, dirty`` when the work tree differs from it; or why there is none."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "not a git checkout"
        dirty = git("status", "--porcelain").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "git unavailable"
    return f"git {head.stdout.strip()}{', dirty' if dirty else ''}"


def _cargo_version(folder: Path) -> str:
    """The package version in the checkout's Cargo.toml (a workspace root has none: ``workspace``)."""
    try:
        manifest = tomllib.loads((folder / "Cargo.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    version = (manifest.get("package") or {}).get("version")
    return str(version) if isinstance(version, str) else "workspace"


def _host_digests(session: Session, host: Host, bin_dir: str, names: Sequence[str]) -> dict[str, str]:
    """Installed file name → sha256 of those of ``names`` the host has in ``bin_dir``."""
    paths = " ".join(shlex.quote(f"{bin_dir}/{n}") for n in names)
    out = session.run(host, f"sha256sum {paths} 2>/dev/null; true", timeout=60)
    found = {}
    for line in out.stdout.splitlines():
        digest, _, path = line.partition("  ")
        found[path.rsplit("/", 1)[-1]] = digest
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
