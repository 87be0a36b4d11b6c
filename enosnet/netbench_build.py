"""s2n-netbench built once per machine: ``cargo install --locked`` into a cache outside any project.

Every part of s2n-netbench is a crate that ships its ``Cargo.lock``. A crate at
a version is built once per target into
``<cache>/netbench/<target>/<crate>-<version>/bin`` and reused by every later
deploy, test or demo on this machine; a *set* folder then holds hard links to
the binaries of the crates asked for, which the ``netbench`` role pushes to the
hosts. A local checkout (a protocol developer's own change) is built with
``cargo install --locked --path`` every time (cargo's incremental build makes an
unchanged checkout cheap); it counts as built only when its binaries changed.

Builds share one ``CARGO_TARGET_DIR`` (dependencies compiled once for all
crates) and hold a lock, so two processes never build into the cache at once.

This module uses only the standard library: the ``netbench`` role runs it as a
script on the controller (``roles/netbench/files/netbench_build.py`` links
here), so the role and enosnet build the same way into the same cache.

>>> crate_binaries("s2n-netbench-driver-s2n-quic")
('s2n-netbench-driver-server-s2n-quic', 's2n-netbench-driver-client-s2n-quic')
>>> crates_for(["tcp"], tools=("s2n-netbench-collector",))["s2n-netbench-driver-tcp"]
'0.1.0'
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The versions enosnet is tested with (each crate's own Cargo.lock pins its dependencies).
PINNED = {
    "s2n-netbench-collector": "0.1.0",
    "s2n-netbench-scenarios": "0.1.1",
    "s2n-netbench-cli": "0.1.0",
    "s2n-netbench-driver-tcp": "0.1.0",
    "s2n-netbench-driver-s2n-quic": "0.1.0",
    "s2n-netbench-driver-s2n-tls": "0.1.0",
    "s2n-netbench-driver-native-tls": "0.1.0",
}
# What the hosts need besides the drivers; the report tool (s2n-netbench-cli) runs on the controller.
HOST_TOOLS = ("s2n-netbench-collector", "s2n-netbench-scenarios")
DRIVER_CRATE = "s2n-netbench-driver-{}"
CRATE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")
Progress = Callable[[str], None]


class BuildError(Exception):
    """A build failed or was asked for wrongly; the message names the crate or folder and what cargo said."""


@dataclass(frozen=True)
class Built:
    """The result of ``build``: the folder holding every binary, and what was built now or reused."""

    bin_dir: Path
    binaries: tuple[str, ...]
    built: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {"bin_dir": str(self.bin_dir), "binaries": list(self.binaries), "built": list(self.built),
                "reused": list(self.reused), "seconds": round(self.seconds, 1), "changed": bool(self.built)}


def crate_binaries(crate: str) -> tuple[str, ...]:
    """The executables a crate installs."""
    if crate.startswith("s2n-netbench-driver-"):
        proto = crate.removeprefix("s2n-netbench-driver-")
        return (f"s2n-netbench-driver-server-{proto}", f"s2n-netbench-driver-client-{proto}")
    if crate == "s2n-netbench-cli":
        return ("s2n-netbench",)
    return (crate,)


def crates_for(drivers: Iterable[str], *, tools: Iterable[str] = HOST_TOOLS,
               versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Crate → version for these drivers (``tcp``, ``s2n-quic``, …) and tools, at the pinned versions."""
    pins = {**PINNED, **(versions or {})}
    names = [*tools, *(DRIVER_CRATE.format(d) for d in drivers)]
    missing = [n for n in names if n not in pins]
    if missing:
        raise BuildError(f"no version pinned for {', '.join(missing)}: give one (crate: version)")
    return {name: pins[name] for name in names}


def cache_dir() -> Path:
    """``$ENOSNET_CACHE``, else ``$XDG_CACHE_HOME/enosnet``, else ``~/.cache/enosnet``."""
    if os.environ.get("ENOSNET_CACHE"):
        return Path(os.environ["ENOSNET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enosnet"


def rust_tool(name: str) -> str:
    """``cargo``, ``rustc`` or ``rustup``: on PATH, else where rustup puts them (``$CARGO_HOME/bin``)."""
    found = shutil.which(name)
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")
    return str(home / "bin" / name) if (home / "bin" / name).is_file() else name


def host_target() -> str:
    """The Rust target triple of this machine (``rustc -vV``)."""
    try:
        out = subprocess.run([rust_tool("rustc"), "-vV"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"rustc not found or failed ({exc}): building s2n-netbench needs the Rust toolchain "
                         "(cargo, rustc) on the controller") from None
    for line in out.splitlines():
        if line.startswith("host:"):
            return line.split(":", 1)[1].strip()
    raise BuildError("rustc -vV did not name the host target")


def crate_folder(crate: str, version: str, *, cache: Path | None = None, target: str | None = None) -> Path:
    """Where a crate at a version is (or would be) installed in the cache: its binaries are in ``bin/``."""
    return (cache or cache_dir()) / "netbench" / (target or host_target()) / f"{crate}-{version}"


def build(crates: Mapping[str, str] | None = None, *, path: str | Path | None = None,
          packages: Sequence[str] = (), cache: Path | None = None, on_output: Progress | None = None) -> Built:
    """Build (or reuse) ``crates`` (crate → version) and the packages of a local ``path``.

    Returns the set folder holding every binary. ``on_output`` gets cargo's
    lines while something builds (nothing is called when all is cached).
    """
    started = time.monotonic()
    root = (cache or cache_dir()) / "netbench"
    for crate, version in (crates or {}).items():
        if not CRATE.fullmatch(crate) or not VERSION.fullmatch(version):
            raise BuildError(f"{crate}@{version}: not a crate name and an exact version such as 0.1.0")
    if not crates and path is None:
        raise BuildError("nothing to build: give crates or a path")
    target = host_target()
    folders, built, reused = [], [], []
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        for crate, version in sorted((crates or {}).items()):
            folder = crate_folder(crate, version, cache=root.parent, target=target)
            if _complete(folder, crate_binaries(crate)):
                reused.append(f"{crate}@{version}")
            else:
                _cargo(["install", "--locked", "--root", str(folder), crate, "--version", f"={version}"],
                       target_dir=root / target / "target", what=f"{crate} {version}", on_output=on_output)
                _stamp(folder, crate_binaries(crate))
                built.append(f"{crate}@{version}")
            folders.append(folder / "bin")
        if path is not None:
            folder, changed = _build_path(Path(path), packages, root / target, on_output)
            folders.append(folder)
            (built if changed else reused).append(str(Path(path).resolve()))
        bin_dir = _link_set(root / target / "sets", folders)
    names = tuple(sorted(p.name for p in bin_dir.iterdir()))
    return Built(bin_dir, names, tuple(built), tuple(reused), time.monotonic() - started)


def _build_path(path: Path, packages: Sequence[str], root: Path, on_output: Progress | None) -> tuple[Path, bool]:
    """Build a checkout into its own folder; returns the folder of binaries and whether they changed."""
    source = path.resolve()
    if not (source / "Cargo.toml").is_file():
        raise BuildError(f"{path}: no Cargo.toml there (give a crate folder, or a workspace and its packages)")
    folder = root / "paths" / hashlib.sha256(str(source).encode()).hexdigest()[:12]
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)  # only what this checkout builds now
    dirs = [source / p for p in packages] if packages else [source]
    for crate_dir in dirs:
        if not (crate_dir / "Cargo.toml").is_file():
            raise BuildError(f"{crate_dir}: no Cargo.toml (packages are folders inside {path})")
        # a target folder per checkout: cargo names a path package's build by its name and version, not
        # its folder, so two copies of one crate sharing a target would take each other's builds
        _cargo(["install", "--locked", "--root", str(staging), "--path", str(crate_dir)],
               target_dir=folder.with_name(folder.name + ".target"), what=str(crate_dir), on_output=on_output)
    if _digests(staging / "bin") == _digests(folder / "bin"):
        shutil.rmtree(staging)
        return folder / "bin", False
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder / "bin", True


def _digests(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir() if f.is_file()}


def _cargo(args: list[str], *, target_dir: Path, what: str, on_output: Progress | None) -> None:
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "CARGO_TERM_COLOR": "never"}
    # a checkout's rust-toolchain file may name a toolchain that cannot be fetched: use the machine's own
    env.setdefault("RUSTUP_TOOLCHAIN", _default_toolchain())
    try:
        proc = subprocess.Popen([rust_tool("cargo"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    except OSError as exc:
        raise BuildError(f"cannot run cargo ({exc.strerror}): building s2n-netbench needs the Rust toolchain") \
            from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail[-30:], line.rstrip()]
        if on_output is not None:
            on_output(line.rstrip())
    if proc.wait() != 0:
        raise BuildError(f"building {what} failed (cargo exit {proc.returncode}):\n" + "\n".join(tail[-15:]))


def _default_toolchain() -> str:
    try:
        out = subprocess.run([rust_tool("rustup"), "default"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "stable"
    return out.split()[0] if out.split() else "stable"


def _complete(folder: Path, binaries: Sequence[str]) -> bool:
    try:
        stamp = json.loads((folder / ".enosnet-built").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("binaries") == list(binaries) and all((folder / "bin" / b).is_file() for b in binaries)


def _stamp(folder: Path, binaries: Sequence[str]) -> None:
    missing = [b for b in binaries if not (folder / "bin" / b).is_file()]
    if missing:
        raise BuildError(f"cargo install left no {', '.join(missing)} in {folder / 'bin'}")
    (folder / ".enosnet-built").write_text(json.dumps({"binaries": list(binaries)}))


def _link_set(sets: Path, folders: Sequence[Path]) -> Path:
    """One folder with hard links to every binary of ``folders`` (named by what it holds)."""
    files = sorted((f for d in folders for f in d.iterdir() if f.is_file()), key=lambda f: f.name)
    key = hashlib.sha256("\n".join(f"{f}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]
    out = sets / key
    if out.is_dir():
        return out
    staging = sets / f".{key}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in files:
        os.link(f, staging / f.name)
    os.replace(staging, out)
    return out


class _locked:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def main(argv: Sequence[str] | None = None) -> int:
    """``netbench_build.py [--cache DIR] [--versions JSON] [--path P [--package X]...] [CRATE[@VERSION] ...]``.

    Prints the result as JSON. A crate without a version gets the one
    ``--versions`` gives it, else the pinned one.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crates", nargs="*", help="crate or crate@version")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--versions", default="{}", help="JSON object {crate: version}")
    parser.add_argument("--path")
    parser.add_argument("--package", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        versions = {**PINNED, **json.loads(args.versions)}
        crates = {name: version or versions[name] for name, _, version in (c.partition("@") for c in args.crates)}
    except KeyError as exc:
        parser.error(f"no version pinned for {exc.args[0]}: give it as crate@version")
    except (ValueError, TypeError):
        parser.error("--versions takes a JSON object {crate: version}")
    try:
        result = build(crates, path=args.path, packages=args.package, cache=args.cache,
                       on_output=lambda line: print(line, file=sys.stderr))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
