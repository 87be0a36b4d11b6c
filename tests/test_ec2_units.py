"""EC2 pieces that need no endpoint: config validation, prices, tags and expiry, error translation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import botocore.exceptions as bce
import pytest

from enosnet.config import Ec2ProviderConfig, Ec2RoleSpec, parse_config
from enosnet.errors import ConfigError, ProviderError
from enosnet.providers import ec2_hostkeys, provider_class
from enosnet.providers import ec2_resources as res
from enosnet.providers.ec2 import Ec2Provider
from enosnet.providers.ec2_aws import Aws, endpoint_is_local, translated
from enosnet.providers.ec2_pricing import PriceTable, format_cost, total

GOOD = """\
name: quic-incast
provider: {kind: ec2, region: us-west-2, allow_cidr: 203.0.113.7/32}
roles:
  server: {count: 4, instance_type: c5n.4xlarge, az: us-west-2a, placement: cluster}
  client: {count: 2, instance_type: c5n.4xlarge, az: [us-west-2b, us-west-2c]}
  spare: 1
"""


def test_the_issue_example_parses() -> None:
    cfg = parse_config(GOOD)
    assert provider_class(cfg.kind) is Ec2Provider
    assert isinstance(cfg.provider, Ec2ProviderConfig) and cfg.provider.max_lifetime_hours == 4
    roles = cfg.roles
    assert all(isinstance(spec, Ec2RoleSpec) for spec in roles.values())
    assert isinstance(roles["client"], Ec2RoleSpec) and roles["client"].zones() == ["us-west-2b", "us-west-2c"]
    assert isinstance(roles["spare"], Ec2RoleSpec) and roles["spare"].instance_type == "c5.large"


@pytest.mark.parametrize(("change", "where", "says"), [
    (("az: [us-west-2b, us-west-2c]", "az: [us-west-2b]"), "c.yaml:5 roles.client", "exactly one per host"),
    (("placement: cluster", "placement: tight"), "c.yaml:4 roles.server.placement", "'cluster' or 'spread'"),
    (("count: 4,", "count: 4, cpus: 8,"), "c.yaml:4 roles.server.cpus", "unknown field"),
    (("allow_cidr: 203.0.113.7/32", "allow_cidr: 203.0.113.300/32"), "c.yaml:2 provider.allow_cidr",
     "not an address range"),
    (("az: us-west-2a,", "az: west,"), "c.yaml:4 roles.server.az", "pattern"),
    (("region: us-west-2,", "region: us-west-2, keyfile: k,"), "c.yaml:2 provider", "give `key_name` too"),
    (("spare: 1", "spare: true"), "c.yaml:6 roles.spare", "host count or a mapping"),
])
def test_bad_ec2_configs_name_the_field(change: tuple[str, str], where: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(GOOD.replace(*change), "c.yaml")
    assert where in str(caught.value) and says in str(caught.value)


def test_ec2_role_fields_are_refused_for_other_providers() -> None:
    text = "name: x\nprovider: {kind: local}\nroles:\n  server: {count: 1, instance_type: c5.large}\n"
    with pytest.raises(ConfigError, match=r"c.yaml:4 roles.server.instance_type: unknown field"):
        parse_config(text, "c.yaml")


def test_ec2_needs_roles() -> None:
    with pytest.raises(ConfigError, match="the ec2 provider needs `roles`"):
        parse_config("name: x\nprovider: {kind: ec2}\n")


def test_prices_are_overridable_and_marked_approximate() -> None:
    table = PriceTable({"c5.large": 1.0})
    assert table.hourly("c5.large") == 1.0 and table.hourly("c5n.4xlarge") == 0.864
    assert table.accrued("c5.large", seconds=7200) == 2.0
    assert table.accrued("c5.large", seconds=1) == pytest.approx(1 / 60)  # one minute at least
    assert total([1.0, None]) == (1.0, 1)
    assert format_cost(0.864) == "~$0.86 (approx.)"


def test_expiry_tags() -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    stamp = res.expiry_stamp(4, now)
    assert stamp == "2030-01-01T16:00:00Z"
    assert not res.expired({res.TAG_EXPIRES: stamp}, now)
    assert res.expired({res.TAG_EXPIRES: stamp}, datetime(2030, 1, 1, 16, tzinfo=UTC))
    assert not res.expired({}, now) and not res.expired({res.TAG_EXPIRES: "soon"}, now)


def test_owner_filters() -> None:
    assert res.tag_filters() == [{"Name": "tag-key", "Values": ["enosnet:env"]}]
    assert {"Name": "tag:enosnet:owner", "Values": ["ann@lab"]} in res.tag_filters(owner="ann@lab")
    assert "@" in res.owner_id()


@pytest.mark.parametrize(("exc", "code", "says"), [
    (bce.NoCredentialsError(), "NoCredentials", "no AWS credentials found"),
    (bce.NoRegionError(), "NoRegion", "no AWS region"),
    (bce.EndpointConnectionError(endpoint_url="https://ec2.example"), "EndpointUnreachable", "cannot reach AWS"),
    (bce.ClientError({"Error": {"Code": "InstanceLimitExceeded", "Message": "You have requested more instances"}},
                     "RunInstances"), "InstanceLimitExceeded", "You have requested more instances"),
])
def test_botocore_errors_become_provider_errors(exc: Exception, code: str, says: str) -> None:
    with pytest.raises(ProviderError) as caught, translated("ec2 run_instances"):
        raise exc
    assert caught.value.code == code and says in str(caught.value) and caught.value.__cause__ is exc
    assert caught.value.hint


def test_boto3_takes_the_endpoint_region_and_retries_from_its_standard_chain(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    aws = Aws(retry_mode="adaptive", max_attempts=7)
    assert aws.region == "eu-north-1" and aws.endpoint == "http://127.0.0.1:9" and aws.endpoint_is_local
    retries = aws.client("ec2").meta.config.retries
    assert retries is not None and retries["mode"] == "adaptive" and retries["total_max_attempts"] == 7
    assert not endpoint_is_local("https://ec2.eu-north-1.amazonaws.com")


def test_zero_hosts_is_refused_before_any_aws_call(tmp_path: Path) -> None:
    from enosnet.environment import Environment

    provider = Ec2Provider(parse_config(GOOD.replace("count: 4", "count: 0").replace("count: 2", "count: 0")
                                        .replace("spare: 1", "spare: 0").replace(", az: [us-west-2b, us-west-2c]", "")),
                           Environment(tmp_path / "env"))
    with pytest.raises(ConfigError, match="every role asks for 0 hosts"):
        provider.plan()


CONSOLE = """[   12.3] cloud-init[1200]: Cloud-init v. 22.2.2 finished
ec2: #############################################################
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:x3p3Ff4Zl1k root@ip-10-0-0-5 (ECDSA)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= root@ip-10-0-0-5
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOn/9ZKQ root@ip-10-0-0-5
ssh-ed25519 not*base64 root@ip-10-0-0-5
-----END SSH HOST KEY KEYS-----
"""


def test_host_keys_are_read_from_the_console_and_pinned(tmp_path: Path) -> None:
    keys = ec2_hostkeys.host_keys(CONSOLE)
    assert keys == ["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=",
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOn/9ZKQ"]
    assert ec2_hostkeys.host_keys(CONSOLE.split("-----END SSH HOST KEY KEYS")[0]) == []  # not printed whole yet
    known = tmp_path / "ssh" / "known_hosts"
    known.parent.mkdir()
    known.write_text("203.0.113.9 ssh-ed25519 AAAAold\n198.51.100.1 ssh-ed25519 AAAAother\n")
    ec2_hostkeys.pin(known, "203.0.113.9", keys)  # a reused address: its old key goes
    assert known.read_text().splitlines() == ["198.51.100.1 ssh-ed25519 AAAAother", *(f"203.0.113.9 {k}" for k in keys)]
