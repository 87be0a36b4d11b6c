"""Finding and releasing what enosnet created on EC2, by state and by tag.

Everything the EC2 provider creates carries the tags below, so that
``destroy`` finds it even when a crash came between an API answer and the
state write, and ``enosnet destroy --all --provider ec2`` finds it without
any state at all.

>>> sorted(tags_for(env_id="demo-a1b2c3", owner="ann@lab", expires="2030-01-01T00:00:00Z", name="demo"))
['Name', 'enosnet:env', 'enosnet:expires', 'enosnet:owner']
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from enosnet.errors import ProviderError
from enosnet.providers.ec2_aws import Aws

TAG_ENV = "enosnet:env"
TAG_OWNER = "enosnet:owner"
TAG_ROLE = "enosnet:role"
TAG_SLOT = "enosnet:slot"  # one host's slot (``server-0``): what deploys before launches were tagged wrote
TAG_LAUNCH = "enosnet:launch"  # the launch an instance came from: its slots are in the state, by launch index
TAG_EXPIRES = "enosnet:expires"
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
POLL_INTERVAL = 2.0


def owner_id() -> str:
    """Who deploys from here: ``user@controller-host`` (the owner tag)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def tags_for(*, env_id: str, owner: str, expires: str, name: str, **more: str) -> dict[str, str]:
    return {TAG_ENV: env_id, TAG_OWNER: owner, TAG_EXPIRES: expires, "Name": name, **more}


def tag_specs(tags: dict[str, str], *kinds: str) -> list[dict[str, Any]]:
    """``TagSpecifications`` tagging each resource kind on creation."""
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    return [{"ResourceType": kind, "Tags": pairs} for kind in kinds]


def tag_dict(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def tag_filters(*, env_id: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
    """Filters matching enosnet resources: of one environment, of one owner, or every one (neither given)."""
    filters: list[dict[str, Any]] = [{"Name": "tag-key", "Values": [TAG_ENV]}]
    if env_id:
        filters.append({"Name": f"tag:{TAG_ENV}", "Values": [env_id]})
    if owner:
        filters.append({"Name": f"tag:{TAG_OWNER}", "Values": [owner]})
    return filters


def expired(tags: dict[str, str], now: datetime) -> bool:
    """Whether the resource's expiry tag has passed (a resource without one never expires)."""
    stamp = tags.get(TAG_EXPIRES)
    if not stamp:
        return False
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= now
    except ValueError:
        return False


def expiry_stamp(hours: float, now: datetime | None = None) -> str:
    """The expiry tag value ``hours`` from now, e.g. ``2030-01-01T04:00:00Z``."""
    moment = (now or datetime.now(UTC)).timestamp() + hours * 3600
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ── what exists ─────────────────────────────────────────────────────────────


@dataclass
class Found:
    """EC2 resources of enosnet, by kind."""

    instances: list[str] = field(default_factory=list)
    placement_groups: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    key_pairs: list[str] = field(default_factory=list)

    def merge(self, other: Found) -> Found:
        return Found(*(sorted({*mine, *theirs}) for mine, theirs in
                       zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[list[str], list[str], list[str], list[str]]:
        return self.instances, self.placement_groups, self.security_groups, self.key_pairs

    def __bool__(self) -> bool:
        return any(self.as_tuple())

    def summary(self) -> str:
        counts = zip(("instances", "placement groups", "security groups", "key pairs"), self.as_tuple(), strict=True)
        return ", ".join(f"{len(items)} {what}" for what, items in counts)


@dataclass
class SweepReport:
    """What a release or sweep removed, and what it could not (``problems``)."""

    released: Found = field(default_factory=Found)
    problems: list[str] = field(default_factory=list)


def find(aws: Aws, filters: list[dict[str, Any]], *, expired_at: datetime | None = None,
         placement_groups: bool = True) -> tuple[Found, list[str]]:
    """enosnet resources matching ``filters`` (only expired ones when ``expired_at`` is given).

    With ``expired_at``, the groups and keys of an environment that still has
    a live unexpired instance are kept too, whatever their own tag says (a
    later deploy may have added hosts with a later expiry).
    """
    found, problems = Found(), []
    instances = [i for r in aws.pages("describe_instances", "Reservations", Filters=[
        *filters, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]) for i in r["Instances"]]
    alive = {tag_dict(i).get(TAG_ENV) for i in instances if expired_at and not expired(tag_dict(i), expired_at)}

    def keep(resource: dict[str, Any], *, instance: bool = False) -> bool:
        tags = tag_dict(resource)
        return expired_at is None or (expired(tags, expired_at) and (instance or tags.get(TAG_ENV) not in alive))

    found.instances = sorted(i["InstanceId"] for i in instances if keep(i, instance=True))
    groups = aws.call("describe_security_groups", Filters=filters)["SecurityGroups"]
    found.security_groups = sorted(g["GroupId"] for g in groups if keep(g))
    keys = aws.call("describe_key_pairs", Filters=filters)["KeyPairs"]
    found.key_pairs = sorted(k["KeyName"] for k in keys if keep(k))
    if placement_groups:
        try:
            pgs = aws.call("describe_placement_groups", Filters=filters)["PlacementGroups"]
            found.placement_groups = sorted(p["GroupName"] for p in pgs if keep(p))
        except ProviderError as exc:
            problems.append(f"placement groups could not be listed: {exc}")
    return found, problems


# ── releasing ───────────────────────────────────────────────────────────────


def release(aws: Aws, found: Found, *, deadline: float) -> SweepReport:
    """Terminate the instances, wait for them, then delete placement groups, security groups and key pairs.

    Dependency errors (a group still used by a terminating instance) are
    retried until ``deadline`` (monotonic); anything already gone counts as
    released. Raises nothing for a single resource: failures are in ``problems``.
    """
    report = SweepReport(released=Found(key_pairs=list(found.key_pairs)))
    report.released.instances = _terminate(aws, found.instances, deadline, report.problems)
    for name in found.placement_groups:
        if _delete(aws, "delete_placement_group", {"GroupName": name}, deadline, report.problems,
                   gone=("InvalidPlacementGroup.Unknown",)):
            report.released.placement_groups.append(name)
    for group in found.security_groups:
        if _delete(aws, "delete_security_group", {"GroupId": group}, deadline, report.problems,
                   gone=("InvalidGroup.NotFound",)):
            report.released.security_groups.append(group)
    for key in found.key_pairs:
        _delete(aws, "delete_key_pair", {"KeyName": key}, deadline, report.problems, gone=("InvalidKeyPair.NotFound",))
    return report


def _terminate(aws: Aws, ids: list[str], deadline: float, problems: list[str]) -> list[str]:
    try:
        pending = [i for i, d in instance_states(aws, ids).items() if d["State"]["Name"] != "terminated"]
        if pending:
            aws.call("terminate_instances", InstanceIds=pending)
    except ProviderError as exc:
        problems.append(f"terminating {', '.join(ids)}: {exc}")
        return []
    left = wait_for_states(aws, pending, ("terminated",), deadline)
    if left:
        problems.append(f"instances not terminated before the deadline: {', '.join(sorted(left))}")
    return [i for i in ids if i not in left]


def _exists(aws: Aws, instance_id: str) -> bool:
    try:
        return bool(aws.call("describe_instances", InstanceIds=[instance_id])["Reservations"])
    except ProviderError as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            return False
        raise


def instance_states(aws: Aws, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Instance id → its description, for the ids that still exist."""
    ids = list(ids)
    if not ids:
        return {}
    try:
        reservations = aws.pages("describe_instances", "Reservations", InstanceIds=ids)
    except ProviderError as exc:
        if exc.code != "InvalidInstanceID.NotFound":
            raise
        reservations = [r for i in ids if _exists(aws, i)
                        for r in aws.pages("describe_instances", "Reservations", InstanceIds=[i])]
    return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}


def wait_for_states(aws: Aws, ids: list[str], states: tuple[str, ...], deadline: float, *,
                    missing_is_done: bool = True) -> set[str]:
    """Poll until every instance is in one of ``states`` or ``deadline`` passes; returns the rest.

    An instance AWS does not know (yet: describing new ids is eventually
    consistent) counts as done when ``missing_is_done``, else as still waiting.
    """
    left = set(ids)
    while left:
        seen = instance_states(aws, left)
        left = {i for i in left if (i in seen and seen[i]["State"]["Name"] not in states)
                or (i not in seen and not missing_is_done)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
    return left


def _delete(aws: Aws, operation: str, params: dict[str, Any], deadline: float, problems: list[str], *,
            gone: tuple[str, ...]) -> bool:
    """Delete one resource, retrying dependency errors until ``deadline``; True when it is gone."""
    while True:
        try:
            aws.call(operation, **params)
            return True
        except ProviderError as exc:
            if exc.code in gone:
                return True
            retry = exc.code in ("DependencyViolation", "InvalidPlacementGroup.InUse")
            if not retry or time.monotonic() >= deadline:
                problems.append(f"{operation} {next(iter(params.values()))}: {exc}")
                return False
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def sweep(aws: Aws, *, owner: str | None, expired_only: bool = False, timeout: float = 600.0) -> SweepReport:
    """Release every enosnet resource of ``owner`` in the region (every owner's when None), even without state."""
    now = datetime.now(UTC) if expired_only else None
    found, problems = find(aws, tag_filters(owner=owner), expired_at=now)
    report = release(aws, found, deadline=time.monotonic() + timeout)
    report.problems[:0] = problems
    return report
