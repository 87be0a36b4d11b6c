"""Config files are validated before anything is acquired, with errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from enosnet.config import load_config, parse_config
from enosnet.errors import ConfigError


def test_minimal_config() -> None:
    cfg = parse_config("name: demo\nprovider: {kind: local}\nroles: {server: 1, client: 4}\n")
    assert cfg.kind == "local"
    assert {r: s.count for r, s in cfg.roles.items()} == {"server": 1, "client": 4}
    assert cfg.provider.subnet == "198.18.0.0/15"  # type: ignore[union-attr]


def test_role_as_mapping() -> None:
    cfg = parse_config("name: d\nprovider: {kind: local}\nroles:\n  server: {count: 2}\n")
    assert cfg.roles["server"].count == 2


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("name: d\nprovider: {kind: local}\nroles: {server: -1}\n", "c.yaml:3 roles.server", "greater than or equal"),
        ("name: d\nprovider: {kind: local}\nroles: {server: 1}\ncolour: red\n", "c.yaml:4 colour", "unknown field"),
        ("name: d\nprovider: {kind: local, subnet: 10.0.0.0/30}\nroles: {s: 1}\n", "c.yaml:2 provider.subnet",
         "at least a /24"),
        ("name: d\nprovider: {kind: docker}\nroles: {s: 1}\n", "c.yaml:2 provider.kind", "unknown provider 'docker'"),
        ("name: 'bad name'\nprovider: {kind: local}\nroles: {s: 1}\n", "c.yaml:1 name", "should match pattern"),
        ("name: d\nprovider: {kind: local}\nroles: {server: yes}\n", "c.yaml:3 roles.server", "host count"),
        ("name: d\nprovider: {kind: local}\n", "c.yaml", "needs `roles`"),
    ],
)
def test_errors_name_the_field_and_line(text: str, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert where in str(err.value)
    assert reason in str(err.value)


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:3: not valid YAML.*starts at line 2"):
        parse_config("name: d\nroles: {server: 1\n", "c.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config("[1, 2]", "c.yaml")


def test_missing_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:1 name: Field required"):
        parse_config("provider: {kind: local}\nroles: {s: 1}\n", "c.yaml")
