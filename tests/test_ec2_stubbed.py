"""What moto cannot play: placement groups, capacity and quota errors, dependency retries.

botocore's Stubber answers in place of AWS and checks every request against
the EC2 service model (operation, parameter names and types) and, where the
test says so, against the exact parameters expected; ``assert_no_pending_responses``
proves every expected call (e.g. each release) was made.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.errors import ProviderError
from enosnet.providers import ec2_resources as res
from enosnet.providers.ec2 import Ec2Provider, create_placement_group
from enosnet.providers.ec2_aws import Aws
from tests.test_ec2_provider import loopback_only  # noqa: F401  (fixture: nothing may leave this machine)

AMI = "ami-0123456789abcdef0"
CONFIG = f"""\
name: pg
provider: {{kind: ec2, region: us-west-2, allow_cidr: 203.0.113.7/32, wait_ssh: false, destroy_timeout: 5}}
roles:
  server: {{count: 2, instance_type: c5n.large, az: us-west-2a, placement: cluster, ami: {AMI}}}
  client: {{count: 1, instance_type: c5n.large, az: us-west-2b, placement: spread, ami: {AMI}}}
"""


@pytest.fixture(autouse=True)
def offline_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, no endpoint override, fast polls: the Stubber answers everything."""
    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_DEFAULT_REGION": "us-west-2"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(res, "POLL_INTERVAL", 0.01)


def instance(iid: str, az: str, state: str = "running", index: int = 0) -> dict[str, Any]:
    codes = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}
    return {"InstanceId": iid, "InstanceType": "c5n.large", "AmiLaunchIndex": index,
            "State": {"Name": state, "Code": codes[state]}, "Placement": {"AvailabilityZone": az},
            "PublicIpAddress": "192.0.2.10", "PrivateIpAddress": "172.31.0.10",
            "LaunchTime": datetime(2030, 1, 1, tzinfo=UTC)}


def reservations(*instances: dict[str, Any]) -> dict[str, Any]:
    return {"Reservations": [{"ReservationId": "r-1", "Instances": list(instances)}] if instances else []}


def subnet(az: str, sid: str) -> dict[str, Any]:
    return {"Subnets": [{"SubnetId": sid, "AvailabilityZone": az, "VpcId": "vpc-1", "CidrBlock": "172.31.0.0/20"}]}


def stub_until_launch(stub: Stubber, provider: Ec2Provider) -> None:
    """The calls of a deploy up to the client's launch, with the placement groups' exact requests."""
    env_id = provider.env_id
    stub.add_response("describe_images", {"Images": [{"ImageId": AMI, "RootDeviceName": "/dev/xvda",
                                                      "Name": "al2023-ami-2023"}]}, {"ImageIds": [AMI]})
    stub.add_response("describe_subnets", subnet("us-west-2a", "subnet-a"))
    stub.add_response("describe_subnets", subnet("us-west-2b", "subnet-b"))
    stub.add_response("import_key_pair", {"KeyName": f"enosnet-{env_id}", "KeyFingerprint": "f"})
    stub.add_response("create_security_group", {"GroupId": "sg-1"})
    stub.add_response("authorize_security_group_ingress", {"Return": True})
    for strategy, az in (("cluster", "us-west-2a"), ("spread", "us-west-2b")):
        stub.add_response("create_placement_group", {}, {
            "GroupName": f"enosnet-{env_id}-{strategy}-{az}", "Strategy": strategy, "TagSpecifications": ANY})
    stub.add_response("describe_instances", reservations())
    stub.add_response("run_instances", {"Instances": [instance("i-s0", "us-west-2a", "pending", 0),
                                                      instance("i-s1", "us-west-2a", "pending", 1)]})


def stub_release(stub: Stubber, provider: Ec2Provider, ids: list[str]) -> None:
    """The calls of ``destroy`` for instances ``ids``, both placement groups, the group and the key."""
    env_id = provider.env_id
    live = [instance(i, "us-west-2a") for i in ids]
    stub.add_response("describe_instances", reservations(*live))
    stub.add_response("describe_security_groups", {"SecurityGroups": []})
    stub.add_response("describe_key_pairs", {"KeyPairs": []})
    stub.add_response("describe_instances", reservations(*live))
    stub.add_response("terminate_instances", {}, {"InstanceIds": ids})
    stub.add_response("describe_instances", reservations(*[instance(i, "us-west-2a", "terminated") for i in ids]))
    for strategy, az in (("cluster", "us-west-2a"), ("spread", "us-west-2b")):
        stub.add_response("delete_placement_group", {}, {"GroupName": f"enosnet-{env_id}-{strategy}-{az}"})
    stub.add_response("delete_security_group", {}, {"GroupId": "sg-1"})
    stub.add_response("delete_key_pair", {}, {"KeyName": f"enosnet-{env_id}"})


def stubbed_provider(tmp_path: Path) -> tuple[Ec2Provider, Stubber]:
    provider = Ec2Provider(parse_config(CONFIG), Environment(tmp_path / "env"))
    return provider, Stubber(provider.aws.client("ec2"))


def test_placement_groups_are_created_used_and_deleted(tmp_path: Path) -> None:
    provider, stub = stubbed_provider(tmp_path)
    stub_until_launch(stub, provider)
    stub.add_response("run_instances", {"Instances": [instance("i-c0", "us-west-2b", "pending")]},
                      {**{k: ANY for k in ("ImageId", "InstanceType", "MinCount", "MaxCount", "KeyName",
                                            "InstanceInitiatedShutdownBehavior", "UserData", "NetworkInterfaces",
                                            "MetadataOptions", "TagSpecifications")},
                       "Placement": {"AvailabilityZone": "us-west-2b",
                                     "GroupName": f"enosnet-{provider.env_id}-spread-us-west-2b"}})
    running = [instance("i-s0", "us-west-2a"), instance("i-s1", "us-west-2a"), instance("i-c0", "us-west-2b")]
    stub.add_response("describe_instances", reservations(*running))
    stub.add_response("describe_instances", reservations(*running))
    stub_release(stub, provider, ["i-c0", "i-s0", "i-s1"])
    with stub:
        with provider as (roles, _):
            assert [h.name for h in roles["server"]] == ["server-0", "server-1"]
            assert provider.provider_state["placement_groups"] == [
                f"enosnet-{provider.env_id}-cluster-us-west-2a", f"enosnet-{provider.env_id}-spread-us-west-2b"]
        stub.assert_no_pending_responses()
    assert provider.provider_state == {}


@pytest.mark.parametrize(("code", "message", "hint"), [
    ("InsufficientInstanceCapacity", "We currently do not have sufficient c5n.large capacity in the Availability "
                                     "Zone you requested (us-west-2b).", "try another `az`"),
    ("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit of 2 allows.",
     "Service Quotas"),
])
def test_capacity_and_quota_errors_release_what_was_created(tmp_path: Path, code: str, message: str,
                                                            hint: str) -> None:
    provider, stub = stubbed_provider(tmp_path)
    stub_until_launch(stub, provider)
    stub.add_client_error("run_instances", service_error_code=code, service_message=message, http_status_code=400)
    stub_release(stub, provider, ["i-s0", "i-s1"])
    with stub, pytest.raises(ProviderError) as caught, provider:
        pytest.fail("deploy should have failed")
    stub.assert_no_pending_responses()  # the servers were terminated, groups and key deleted: nothing leaks
    error = caught.value
    assert error.code == code and message in str(error) and hint in (error.hint or "")
    assert str(error).startswith("ec2 run_instances failed:") and f"[{code}]" in str(error)


def test_release_retries_dependency_errors_until_the_group_is_free() -> None:
    aws = Aws("us-west-2")
    with Stubber(aws.client("ec2")) as stub:
        stub.add_client_error("delete_placement_group", "InvalidPlacementGroup.Unknown", "gone already")
        stub.add_client_error("delete_security_group", "DependencyViolation", "resource sg-1 has a dependent object")
        stub.add_response("delete_security_group", {}, {"GroupId": "sg-1"})
        report = res.release(aws, res.Found(security_groups=["sg-1"], placement_groups=["pg"]),
                             deadline=float("inf"))
        stub.assert_no_pending_responses()
    assert report.problems == [] and report.released.security_groups == ["sg-1"]
    assert report.released.placement_groups == ["pg"]


def test_release_gives_up_at_the_deadline_and_says_what_is_left() -> None:
    aws = Aws("us-west-2")
    with Stubber(aws.client("ec2")) as stub:
        stub.add_client_error("delete_security_group", "DependencyViolation", "resource sg-1 has a dependent object")
        report = res.release(aws, res.Found(security_groups=["sg-1"]), deadline=0.0)
    assert report.released.security_groups == []
    assert len(report.problems) == 1 and "sg-1" in report.problems[0] and "DependencyViolation" in report.problems[0]


def test_sweep_lists_and_deletes_placement_groups_by_tag() -> None:
    aws = Aws("us-west-2")
    filters = res.tag_filters(owner="ann@lab")
    with Stubber(aws.client("ec2")) as stub:
        stub.add_response("describe_instances", reservations(), {"Filters": [
            *filters, {"Name": "instance-state-name", "Values": list(res.LIVE_STATES)}]})
        stub.add_response("describe_security_groups", {"SecurityGroups": []}, {"Filters": filters})
        stub.add_response("describe_key_pairs", {"KeyPairs": []}, {"Filters": filters})
        stub.add_response("describe_placement_groups", {"PlacementGroups": [
            {"GroupName": "enosnet-x-cluster-us-west-2a", "Strategy": "cluster",
             "Tags": [{"Key": "enosnet:env", "Value": "x"}, {"Key": "enosnet:owner", "Value": "ann@lab"}]}]},
            {"Filters": filters})
        stub.add_response("delete_placement_group", {}, {"GroupName": "enosnet-x-cluster-us-west-2a"})
        report = res.sweep(aws, owner="ann@lab", timeout=5)
        stub.assert_no_pending_responses()
    assert report.problems == [] and report.released.placement_groups == ["enosnet-x-cluster-us-west-2a"]


def test_an_existing_placement_group_of_the_same_name_is_reused() -> None:
    aws = Aws("us-west-2")
    with Stubber(aws.client("ec2")) as stub:
        stub.add_client_error("create_placement_group", "InvalidPlacementGroup.Duplicate", "already exists")
        create_placement_group(aws, "enosnet-x-cluster-us-west-2a", "cluster", {"enosnet:env": "x"})
        stub.add_client_error("create_placement_group", "InvalidParameterValue", "bad strategy")
        with pytest.raises(ProviderError, match="bad strategy"):
            create_placement_group(aws, "enosnet-x-cluster-us-west-2a", "cluster", {"enosnet:env": "x"})
