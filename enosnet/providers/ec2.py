"""The EC2 provider: role-tagged inventories of Amazon EC2 instances.

::

    name: quic-incast
    provider: {kind: ec2, region: us-west-2, allow_cidr: 203.0.113.7/32}
    roles:
      server: {count: 4, instance_type: c5n.4xlarge, az: us-west-2a, placement: cluster}
      client: {count: 1, instance_type: c5n.4xlarge, az: us-west-2b}

Per environment: one generated key pair (unless ``key_name``), one security
group (SSH and the agent's UDP port from ``allow_cidr``, everything between
members), one placement group per zone and strategy, and the instances. Each
id goes into the environment's state the moment AWS returns it, before any
wait, and every resource is tagged (``enosnet:env``, ``enosnet:owner``,
``enosnet:role``, ``Name``, ``enosnet:expires``) so ``destroy`` also finds
what a crash kept out of the state. Instances terminate by themselves when
``max_lifetime_hours`` passes (a shutdown scheduled at boot, shutdown
behaviour ``terminate``).

>>> plan_slots({"server": 2, "client": 1})
[('server', 0), ('server', 1), ('client', 0)]
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from enosnet.config import Ec2ProviderConfig, Ec2RoleSpec
from enosnet.errors import ConfigError, ProviderError
from enosnet.model import Host, Network, Networks, Roles
from enosnet.providers import ec2_hostkeys
from enosnet.providers import ec2_resources as res
from enosnet.providers.base import HostStatus, Provider, probe_ssh, wait_ssh
from enosnet.providers.ec2_aws import Aws
from enosnet.providers.ec2_lookup import Image, Subnet, resolve_image, resolve_subnet
from enosnet.providers.ec2_pricing import PriceTable, format_cost, total

PUBLIC_ADDRESS_URL = "https://checkip.amazonaws.com"
log = logging.getLogger("enosnet.providers.ec2")


def plan_slots(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Every host as ``(role, index)``, in config order."""
    return [(role, i) for role, count in counts.items() for i in range(count)]


@dataclass(frozen=True)
class Launch:
    """One ``RunInstances`` request: hosts of one role in one zone."""

    role: str
    slots: tuple[int, ...]
    spec: Ec2RoleSpec
    image: Image
    subnet: Subnet
    placement_group: str | None

    @property
    def user(self) -> str:
        return self.spec.user or self.image.user


@dataclass(frozen=True)
class Ec2Plan:
    """What ``deploy`` would create, and what it would cost per hour (approximately)."""

    region: str
    env_id: str
    launches: tuple[Launch, ...]
    placement_groups: tuple[tuple[str, str], ...]
    security_group: str
    key_pair: str
    key_generated: bool
    allow_cidr: str
    expires: str
    hourly: float
    unknown_prices: int

    def lines(self) -> list[str]:
        """The plan as text, one item per line."""
        out = [f"region {self.region}, environment {self.env_id}, hosts terminate by themselves at {self.expires}"]
        for launch in self.launches:
            spot = " (spot)" if launch.spec.spot else ""
            pg = f", placement group {launch.placement_group}" if launch.placement_group else ""
            out.append(f"{len(launch.slots)} × {launch.spec.instance_type}{spot} for role {launch.role} in "
                       f"{launch.subnet.az} ({launch.subnet.id}), AMI {launch.image.id} as {launch.user}{pg}")
        out += [f"placement group {name} ({strategy})" for name, strategy in self.placement_groups]
        out.append(f"security group {self.security_group}: SSH and agent UDP from {self.allow_cidr}, "
                   "all traffic between members")
        out.append(f"key pair {self.key_pair}" + (" (generated, private key kept in the environment)"
                                                  if self.key_generated else " (existing)"))
        out.append(f"cost {format_cost(self.hourly, self.unknown_prices)} per hour")
        return out


@dataclass(frozen=True)
class CostEstimate:
    """Hourly rate and cost accrued so far of the running hosts (approximate)."""

    hourly: float
    accrued: float
    unknown: int
    hosts: int

    def __str__(self) -> str:
        return (f"{self.hosts} hosts, {format_cost(self.hourly, self.unknown)} per hour, "
                f"{format_cost(self.accrued, self.unknown)} so far")


@dataclass
class _Existing:
    """The live instances of this environment, by slot."""

    by_slot: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    surplus: list[str] = field(default_factory=list)


class Ec2Provider(Provider):
    """Hosts on Amazon EC2 (``provider: {kind: ec2}``)."""

    kind = "ec2"

    @property
    def settings(self) -> Ec2ProviderConfig:
        assert isinstance(self.config.provider, Ec2ProviderConfig)
        return self.config.provider

    @property
    def env_id(self) -> str:
        """The environment's id on AWS (tag ``enosnet:env``): the config name and a random suffix.

        Chosen at the first deploy and kept in the state: two controllers with
        the same environment folder (CI runners, ``/root``) never share it.
        """
        return str(self.provider_state.get("env_id") or self._new_env_id)

    @cached_property
    def _new_env_id(self) -> str:
        return f"{self.config.name}-{secrets.token_hex(4)}"

    @property
    def waits_for_ssh(self) -> bool:
        return self.settings.wait_ssh

    @cached_property
    def aws(self) -> Aws:
        region = self.provider_state.get("region") or self.settings.region
        return Aws(region, retry_mode=self.settings.retry_mode, max_attempts=self.settings.max_attempts)

    def roles_spec(self) -> dict[str, Ec2RoleSpec]:
        return {name: spec if isinstance(spec, Ec2RoleSpec) else Ec2RoleSpec(count=spec.count)
                for name, spec in self.config.roles.items()}

    # ── planning (read-only) ────────────────────────────────────────────────

    def check(self) -> None:
        self.allow_cidr()

    def allow_cidr(self) -> str:
        """The address range SSH and the agent port are open to: ``allow_cidr``, else this controller's /32."""
        return self._allow_cidr

    @cached_property
    def _allow_cidr(self) -> str:
        cidr = self.settings.allow_cidr or self._detected_cidr
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:  # said once per deploy
            log.warning("provider.allow_cidr %s opens SSH and the agents' UDP port to the whole internet; "
                        "give the controller's address, e.g. 203.0.113.7/32", cidr)
        return cidr

    @cached_property
    def _detected_cidr(self) -> str:
        if self.aws.endpoint_is_local:
            raise ConfigError("provider.allow_cidr is required with a local AWS endpoint "
                              f"({self.aws.endpoint}): this controller's public address means nothing there")
        return f"{detect_public_address()}/32"

    def plan(self) -> Ec2Plan:
        """What ``deploy`` would create (AMIs and subnets are looked up; nothing is created)."""
        images: dict[str, Image] = {}
        subnets: dict[str | None, Subnet] = {}
        launches: list[Launch] = []
        for role, spec in self.roles_spec().items():
            if not spec.count:
                continue
            ref = spec.ami or self.settings.ami
            image = images.get(ref) or images.setdefault(ref, resolve_image(self.aws, ref))
            for az, slots in _group_by_zone(spec.zones()).items():
                subnet = subnets.get(az) or subnets.setdefault(az, resolve_subnet(self.aws, self.settings, az))
                pg = self._placement_group_name(spec.placement, subnet.az) if spec.placement else None
                launches.append(Launch(role, slots, spec, image, subnet, pg))
        if not launches:
            raise ConfigError("every role asks for 0 hosts: nothing to deploy")
        vpcs = {s.vpc for s in subnets.values()}
        if len(vpcs) > 1:
            raise ConfigError(f"the roles' subnets are in several VPCs ({', '.join(sorted(vpcs))}); one "
                              "environment lives in one VPC (one security group)")
        return self._plan_of(launches)

    def _plan_of(self, launches: list[Launch]) -> Ec2Plan:
        prices = PriceTable(self.settings.prices)
        hourly, unknown = total([prices.hourly(launch.spec.instance_type) for launch in launches
                                 for _ in launch.slots])
        groups = sorted({(lc.placement_group, lc.spec.placement or "") for lc in launches if lc.placement_group})
        return Ec2Plan(
            region=self.aws.region, env_id=self.env_id, launches=tuple(launches),
            placement_groups=tuple((name, strategy) for name, strategy in groups),
            security_group=f"enosnet-{self.env_id}", key_pair=self.settings.key_name or f"enosnet-{self.env_id}",
            key_generated=not self.settings.key_name, allow_cidr=self.allow_cidr(),
            expires=res.expiry_stamp(self.settings.max_lifetime_hours), hourly=hourly, unknown_prices=unknown)

    def _placement_group_name(self, strategy: str, az: str) -> str:
        return f"enosnet-{self.env_id}-{strategy}-{az}"

    # ── acquiring ───────────────────────────────────────────────────────────

    def _acquire(self) -> tuple[Roles, Networks]:
        plan = self.plan()
        owner = self.provider_state.get("owner") or res.owner_id()
        self.save_provider_state(region=plan.region, env_id=plan.env_id, owner=owner, expires=plan.expires,
                                 key_pair=plan.key_pair, key_generated=plan.key_generated,
                                 security_group_name=plan.security_group,
                                 placement_groups=[name for name, _ in plan.placement_groups])
        tags = res.tags_for(env_id=plan.env_id, owner=owner, expires=plan.expires, name=self.config.name)
        if plan.key_generated:
            self._import_key(plan.key_pair, tags)
        group = self._security_group(plan, tags)
        for name, strategy in plan.placement_groups:
            create_placement_group(self.aws, name, strategy, tags)
        existing = self._existing()
        if existing.surplus:
            self.aws.call("terminate_instances", InstanceIds=existing.surplus)
        by_slot = {slot: inst["InstanceId"] for slot, inst in existing.by_slot.items()}
        for launch in plan.launches:
            missing = tuple(i for i in launch.slots if (launch.role, i) not in by_slot)
            if missing:
                by_slot.update(self._launch(launch, missing, group, plan.key_pair, tags))
        return self._wait_hosts(plan, by_slot)

    def _import_key(self, name: str, tags: dict[str, str]) -> None:
        material = Path(f"{self.env.ensure_keypair()}.pub").read_bytes()
        specs = res.tag_specs({**tags, "Name": name}, "key-pair")
        try:
            self.aws.call("import_key_pair", KeyName=name, PublicKeyMaterial=material, TagSpecifications=specs)
        except ProviderError as exc:
            if exc.code != "InvalidKeyPair.Duplicate":
                raise
            # ours by name (an earlier deploy): replace it, its private key may be another one
            self.aws.call("delete_key_pair", KeyName=name)
            self.aws.call("import_key_pair", KeyName=name, PublicKeyMaterial=material, TagSpecifications=specs)

    def _security_group(self, plan: Ec2Plan, tags: dict[str, str]) -> str:
        vpc = plan.launches[0].subnet.vpc
        try:
            group: str = self.aws.call(
                "create_security_group", GroupName=plan.security_group, VpcId=vpc,
                Description=f"enosnet environment {plan.env_id}",
                TagSpecifications=res.tag_specs({**tags, "Name": plan.security_group}, "security-group"))["GroupId"]
        except ProviderError as exc:
            if exc.code != "InvalidGroup.Duplicate":
                raise
            group = self._find_group(plan.security_group, vpc)
            self._revoke_stale(group, plan.allow_cidr)  # e.g. a wider allow_cidr of an earlier deploy
        self.save_provider_state(security_group=group)
        self._authorize(group, plan.allow_cidr)
        return group

    def _find_group(self, name: str, vpc: str) -> str:
        found = self.aws.call("describe_security_groups", Filters=[
            {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        if not found:
            raise ProviderError(f"security group {name} exists but cannot be found in {vpc}")
        return str(found[0]["GroupId"])

    def _permissions(self, group: str, cidr: str) -> list[dict[str, Any]]:
        """The ingress an environment needs: SSH and the agent port from ``cidr``, everything between members."""
        ranges: dict[str, Any] = ({"Ipv6Ranges": [{"CidrIpv6": cidr}]} if ":" in cidr
                                  else {"IpRanges": [{"CidrIp": cidr, "Description": "enosnet controller"}]})
        return [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges},
            {"IpProtocol": "udp", "FromPort": self.config.agent.port, "ToPort": self.config.agent.port, **ranges},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group, "Description": "enosnet members"}]},
        ]

    def _revoke_stale(self, group: str, cidr: str) -> None:
        """Revoke every ingress rule of a reused group that this deploy does not ask for."""
        found = self.aws.call("describe_security_groups", GroupIds=[group])["SecurityGroups"]
        current = found[0].get("IpPermissions", []) if found else []
        wanted = {entry for p in self._permissions(group, cidr) for entry in _ingress_entries(p)}
        stale = [_ingress_permission(entry) for p in current for entry in _ingress_entries(p) if entry not in wanted]
        if stale:
            self.aws.call("revoke_security_group_ingress", GroupId=group, IpPermissions=stale)

    def _authorize(self, group: str, cidr: str) -> None:
        permissions = self._permissions(group, cidr)
        try:
            self.aws.call("authorize_security_group_ingress", GroupId=group, IpPermissions=permissions)
        except ProviderError as exc:
            if exc.code != "InvalidPermission.Duplicate":
                raise

    def _existing(self) -> _Existing:
        """Live instances of this environment: reusable by slot when type and zone still match."""
        wanted = self.roles_spec()
        filters = [*res.tag_filters(env_id=self.env_id), {"Name": "instance-state-name",
                                                          "Values": ["pending", "running"]}]
        records = self.provider_state  # read once, not per instance
        owner = records.get("owner")
        if owner:  # another controller's instances are never reused, even under the same environment id
            filters.append({"Name": f"tag:{res.TAG_OWNER}", "Values": [owner]})
        existing = _Existing()
        launches = records.get("launches", {})
        for reservation in self.aws.pages("describe_instances", "Reservations", Filters=filters):
            for inst in reservation["Instances"]:
                slot = _slot_of(inst, launches)
                spec = wanted.get(slot[0]) if slot else None
                if slot and spec and _matches(inst, spec, slot[1]) and slot not in existing.by_slot:
                    existing.by_slot[slot] = inst
                else:
                    existing.surplus.append(inst["InstanceId"])
        return existing

    def _launch(self, launch: Launch, slots: tuple[int, ...], group: str, key: str,
                tags: dict[str, str]) -> dict[tuple[str, int], str]:
        """Start the hosts of ``slots`` in one request; their ids are in the state before anything else happens.

        The launch's slots go into the state *before* the request, under a
        token every instance is tagged with at creation: an instance's slot is
        the launch's slot at its launch index. So a fleet costs one request per
        role and zone, not a tagging request per host, and a deploy interrupted
        mid-request still knows which instance is which.
        """
        token = f"{launch.role}-{secrets.token_hex(4)}"
        launches = {**self.provider_state.get("launches", {}), token: {"role": launch.role, "slots": list(slots)}}
        self.save_provider_state(launches=launches)
        params = self._run_params(launch, len(slots), group, key,
                                  {**tags, res.TAG_ROLE: launch.role, res.TAG_LAUNCH: token,
                                   "Name": f"{self.config.name}-{launch.role}"})
        answer = self.aws.call("run_instances", **params)
        instances = sorted(answer["Instances"], key=lambda i: int(i.get("AmiLaunchIndex", 0)))
        ids = [i["InstanceId"] for i in instances]
        self.save_provider_state(instances=sorted({*self.provider_state.get("instances", []), *ids}))
        return {(launch.role, slot): instance_id for slot, instance_id in zip(slots, ids, strict=True)}

    def _run_params(self, launch: Launch, count: int, group: str, key: str, tags: dict[str, str]) -> dict[str, Any]:
        minutes = max(1, int(self.settings.max_lifetime_hours * 60))
        params: dict[str, Any] = {
            "ImageId": launch.image.id, "InstanceType": launch.spec.instance_type, "MinCount": count,
            "MaxCount": count, "KeyName": key, "InstanceInitiatedShutdownBehavior": "terminate",
            "UserData": f"#!/bin/sh\n# enosnet safety net: power off (terminate) after the maximum lifetime\n"
                        f"shutdown -P +{minutes}\n",
            "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": launch.subnet.id, "Groups": [group],
                                   "AssociatePublicIpAddress": True, "DeleteOnTermination": True}],
            "Placement": {"AvailabilityZone": launch.subnet.az,
                          **({"GroupName": launch.placement_group} if launch.placement_group else {})},
            "MetadataOptions": {"HttpTokens": "required"},
            "TagSpecifications": res.tag_specs(tags, "instance", "volume"),
        }
        if launch.spec.root_volume_gb:
            params["BlockDeviceMappings"] = [{"DeviceName": launch.image.root_device, "Ebs": {
                "VolumeSize": launch.spec.root_volume_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}]
        if launch.spec.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    # ── waiting ─────────────────────────────────────────────────────────────

    def _wait_hosts(self, plan: Ec2Plan, by_slot: dict[tuple[str, int], str]) -> tuple[Roles, Networks]:
        ids = list(by_slot.values())
        deadline = time.monotonic() + self.settings.running_timeout
        left = res.wait_for_states(self.aws, ids, ("running", "terminated", "shutting-down"), deadline,
                                   missing_is_done=False)
        if left:
            raise ProviderError(f"{len(left)} instances not running after {self.settings.running_timeout:g} s: "
                                f"{', '.join(sorted(left))}", hint="see the EC2 console; `enosnet destroy` "
                                "releases them")
        described = res.instance_states(self.aws, ids)
        dead = {i: d for i, d in described.items() if d["State"]["Name"] != "running"}
        if dead or len(described) < len(ids):
            reasons = "; ".join(f"{i}: {d.get('StateReason', {}).get('Message', d['State']['Name'])}"
                                for i, d in dead.items())
            raise ProviderError(f"instances stopped before running: {reasons or 'gone'}",
                                code="InstanceTerminated", hint="spot capacity or quota; retry or change `az`")
        hosts = self._host_records(plan, by_slot, described)
        self.save_provider_state(hosts=hosts)
        self._wait_ssh(self.roles_from(hosts))
        roles = self.roles_from(self._pin_host_keys(hosts) if self.settings.wait_ssh else hosts)
        networks = Networks(Network(f"ec2-{lc.subnet.az}", lc.subnet.cidr) for lc in plan.launches if lc.subnet.cidr)
        return roles, networks

    def _host_records(self, plan: Ec2Plan, by_slot: dict[tuple[str, int], str],
                      described: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        users = {(lc.role, i): lc.user for lc in plan.launches for i in lc.slots}
        records = []
        for (role, index), instance_id in sorted(by_slot.items(), key=lambda kv: _slot_order(plan, kv[0])):
            d = described[instance_id]
            records.append({"id": d["InstanceId"], "role": role, "index": index, "alias": f"{role}-{index}",
                            "user": users[(role, index)], "type": d["InstanceType"],
                            "az": d["Placement"]["AvailabilityZone"], "public": d.get("PublicIpAddress"),
                            "private": d.get("PrivateIpAddress"), "launched": _iso(d.get("LaunchTime"))})
        return records

    def _pin_host_keys(self, hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pin each host's keys from its console output (see ``ec2_hostkeys``); say which stay unpinned."""
        for h in hosts:
            if h.get("pinned"):
                continue
            keys = ec2_hostkeys.console_keys(self.aws, h["id"])
            if keys:
                ec2_hostkeys.pin(self.env.known_hosts, h["public"] or h["private"], keys)
                h["pinned"] = True
        self.save_provider_state(hosts=hosts)
        unpinned = [h["alias"] for h in hosts if not h.get("pinned")]
        if unpinned:
            log.warning("EC2: no host keys in the console output of %s yet: their first SSH contact accepts the "
                        "key they present (and then hands them their agent's key); compare %s with "
                        "`aws ec2 get-console-output` if in doubt", ", ".join(unpinned), self.env.known_hosts)
        return hosts

    def roles_from(self, hosts: list[dict[str, Any]]) -> Roles:
        """The inventory: public address for SSH, private address as ``enosnet_private_address``.

        Hosts whose keys were pinned from their console are checked strictly; the others on first use.
        """
        keyfile = str(self.env.key_file) if not self.settings.key_name else self.settings.keyfile
        by_role: dict[str, list[Host]] = {}
        for h in hosts:
            checking = "yes" if h.get("pinned") else "accept-new"
            ssh_args = (f"-o UserKnownHostsFile={self.env.known_hosts} -o StrictHostKeyChecking={checking} "
                        "-o LogLevel=ERROR")
            extra = {"ansible_python_interpreter": self.settings.python, "ansible_ssh_common_args": ssh_args,
                     "enosnet_provider": "ec2", "enosnet_private_address": h["private"],
                     "enosnet_instance_id": h["id"], "enosnet_instance_type": h["type"], "enosnet_az": h["az"]}
            host = Host(h["public"] or h["private"], alias=h["alias"], user=h["user"], keyfile=keyfile, extra=extra)
            by_role.setdefault(h["role"], []).append(host)
        return Roles(by_role)

    def _wait_ssh(self, roles: Roles) -> None:
        if not self.settings.wait_ssh:
            return
        silent = wait_ssh(list(roles.all()), time.monotonic() + self.settings.ssh_timeout, interval=2.0)
        if silent:
            raise ProviderError(f"{len(silent)} EC2 hosts did not answer on SSH within {self.settings.ssh_timeout:g}"
                                f" s: {', '.join(h.name for h in silent)}",
                                hint=f"check that allow_cidr ({self.allow_cidr()}) contains this controller's "
                                     "address, and the AMI's SSH user")

    def _still_there(self, roles: Roles) -> bool:
        ids = [h["id"] for h in self.provider_state.get("hosts", [])]
        if self.env.state().config != self.config.model_dump(mode="json") or len(ids) != len(roles.all()):
            return False
        described = res.instance_states(self.aws, ids)
        return len(described) == len(ids) and all(d["State"]["Name"] == "running" for d in described.values())

    # ── releasing ───────────────────────────────────────────────────────────

    def _release(self) -> None:
        state = self.provider_state
        if not state.get("env_id"):
            return  # nothing was ever created: the intent is saved before the first AWS call
        known = res.Found(instances=list(state.get("instances", [])),
                          placement_groups=list(state.get("placement_groups", [])),
                          security_groups=[state["security_group"]] if state.get("security_group") else [],
                          key_pairs=[state["key_pair"]] if state.get("key_generated") else [])
        # placement group names are deterministic and in the state before they are created: no need to list them
        tagged, _ = res.find(self.aws, res.tag_filters(env_id=state["env_id"], owner=state.get("owner")),
                             placement_groups=False)
        if not state.get("key_generated"):
            tagged.key_pairs = []
        report = res.release(self.aws, known.merge(tagged), deadline=time.monotonic() + self.settings.destroy_timeout)
        if report.problems:
            raise ProviderError(f"could not release everything of {self.env.root}: " + "; ".join(report.problems),
                                hint="run `enosnet destroy` again; the state still names what is left")
        self.env.update_state(provider={})

    # ── status ──────────────────────────────────────────────────────────────

    def status(self) -> list[HostStatus]:
        """Each host with its instance state, uptime and accrued cost; SSH is probed only where it can answer.

        No SSH probe when ``wait_ssh`` is off or the endpoint is local (an
        emulator such as moto hands out addresses that are not real hosts).
        """
        roles, _ = self.hosts()
        records = {h["alias"]: h for h in self.provider_state.get("hosts", [])}
        described = res.instance_states(self.aws, [r["id"] for r in records.values()])
        probe = self.settings.wait_ssh and not self.aws.endpoint_is_local
        prices, now = PriceTable(self.settings.prices), datetime.now(UTC)
        out = []
        for host in roles.all():
            d = described.get(records[host.name]["id"]) if host.name in records else None
            state = d["State"]["Name"] if d else "gone"
            up = (now - d["LaunchTime"]).total_seconds() if d and state == "running" else 0.0
            cost = prices.accrued(d["InstanceType"], seconds=up) if d and state == "running" else None
            detail = f"{state}, up {_duration(up)}" + (f", {format_cost(cost)}" if cost is not None else "")
            ok = state == "running"
            if ok and probe:
                ok, banner = probe_ssh(host)
                detail += "" if ok else f", ssh: {banner}"
            out.append(HostStatus(host, roles.roles_of(host), ok, detail))
        return out

    def cost(self) -> CostEstimate:
        """What the environment's running hosts cost per hour and have cost so far (approximate)."""
        prices, now = PriceTable(self.settings.prices), datetime.now(UTC)
        ids = [h["id"] for h in self.provider_state.get("hosts", [])]
        running = [d for d in res.instance_states(self.aws, ids).values() if d["State"]["Name"] == "running"]
        hourly, unknown = total([prices.hourly(d["InstanceType"]) for d in running])
        accrued, _ = total([prices.accrued(d["InstanceType"], seconds=(now - d["LaunchTime"]).total_seconds())
                            for d in running])
        return CostEstimate(hourly, accrued, unknown, len(running))


# ── helpers ─────────────────────────────────────────────────────────────────


IngressEntry = tuple[str, int | None, int | None, str, str]


def _ingress_entries(permission: dict[str, Any]) -> list[IngressEntry]:
    """One ``(protocol, from, to, kind, source)`` per source of an ``IpPermissions`` item."""
    head = (str(permission["IpProtocol"]), permission.get("FromPort"), permission.get("ToPort"))
    if head[0] == "-1":
        head = ("-1", None, None)
    return ([(*head, "CidrIp", r["CidrIp"]) for r in permission.get("IpRanges", [])]
            + [(*head, "CidrIpv6", r["CidrIpv6"]) for r in permission.get("Ipv6Ranges", [])]
            + [(*head, "GroupId", g["GroupId"]) for g in permission.get("UserIdGroupPairs", [])])


def _ingress_permission(entry: IngressEntry) -> dict[str, Any]:
    protocol, low, high, kind, source = entry
    item: dict[str, Any] = {"IpProtocol": protocol}
    if low is not None:
        item.update(FromPort=low, ToPort=high)
    field_name = {"CidrIp": "IpRanges", "CidrIpv6": "Ipv6Ranges", "GroupId": "UserIdGroupPairs"}[kind]
    item[field_name] = [{kind: source}]
    return item


def create_placement_group(aws: Aws, name: str, strategy: str, tags: dict[str, str]) -> None:
    """Create one placement group (an existing one of that name is ours from an earlier run)."""
    try:
        aws.call("create_placement_group", GroupName=name, Strategy=strategy,
                 TagSpecifications=res.tag_specs({**tags, "Name": name}, "placement-group"))
    except ProviderError as exc:
        if exc.code != "InvalidPlacementGroup.Duplicate":
            raise


def detect_public_address(timeout: float = 5.0) -> str:
    """This controller's public IPv4 address as AWS sees it; ``ConfigError`` asking for ``allow_cidr`` if unknown."""
    try:
        with urllib.request.urlopen(PUBLIC_ADDRESS_URL, timeout=timeout) as answer:
            text = str(answer.read(64).decode().strip())
        return str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot detect this controller's public address ({PUBLIC_ADDRESS_URL}: {exc}); "
                          "give provider.allow_cidr, e.g. allow_cidr: 203.0.113.7/32") from None


def _group_by_zone(zones: list[str | None]) -> dict[str | None, tuple[int, ...]]:
    groups: dict[str | None, list[int]] = {}
    for index, zone in enumerate(zones):
        groups.setdefault(zone, []).append(index)
    return {zone: tuple(slots) for zone, slots in groups.items()}


def _slot_of(instance: dict[str, Any], launches: dict[str, Any]) -> tuple[str, int] | None:
    """(role, slot) of an instance: its launch's slot at its launch index (or its own slot tag, if older)."""
    tags = res.tag_dict(instance)
    launch = launches.get(tags.get(res.TAG_LAUNCH, ""))
    index = int(instance.get("AmiLaunchIndex", -1))
    if isinstance(launch, dict) and 0 <= index < len(launch.get("slots", [])):
        return str(launch["role"]), int(launch["slots"][index])
    role, _, slot = tags.get(res.TAG_SLOT, "").rpartition("-")
    return (role, int(slot)) if role and slot.isdigit() else None


def _matches(instance: dict[str, Any], spec: Ec2RoleSpec, index: int) -> bool:
    zone = spec.zones()[index] if index < spec.count else None
    return (index < spec.count and instance["InstanceType"] == spec.instance_type
            and (zone is None or instance["Placement"]["AvailabilityZone"] == zone))


def _slot_order(plan: Ec2Plan, slot: tuple[str, int]) -> tuple[int, int]:
    roles = list(dict.fromkeys(lc.role for lc in plan.launches))
    return roles.index(slot[0]) if slot[0] in roles else len(roles), slot[1]


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _duration(seconds: float) -> str:
    """``1h02m`` / ``3m05s``.

    >>> _duration(3725), _duration(185)
    ('1h02m', '3m05s')
    """
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
