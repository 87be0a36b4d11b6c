"""Read-only EC2 look-ups for a plan: images (by id or SSM public parameter) and subnets.

>>> default_user("/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id", "")
'ubuntu'
>>> default_user("ami-0123456789abcdef0", "al2023-ami-2023.6.20241212.0-kernel-6.1-x86_64")
'ec2-user'
"""

from __future__ import annotations

from dataclasses import dataclass

from enosnet.config import Ec2ProviderConfig
from enosnet.errors import ConfigError, ProviderError
from enosnet.providers.ec2_aws import Aws

_USERS = (("ubuntu", "ubuntu"), ("canonical", "ubuntu"), ("debian", "admin"))


@dataclass(frozen=True)
class Image:
    """An AMI: its id, root device (for the root volume size) and the SSH user it expects."""

    id: str
    root_device: str
    user: str
    name: str = ""


@dataclass(frozen=True)
class Subnet:
    id: str
    az: str
    vpc: str
    cidr: str


def default_user(ref: str, image_name: str) -> str:
    """The SSH user an image expects, guessed from its reference and name (Amazon Linux: ec2-user)."""
    text = f"{ref} {image_name}".lower()
    return next((user for word, user in _USERS if word in text), "ec2-user")


def resolve_image(aws: Aws, ref: str) -> Image:
    """The AMI ``ref`` names: an id, or an SSM public parameter path holding one."""
    image_id = ref
    if ref.startswith("/"):
        image_id = aws.call("get_parameter", service="ssm", Name=ref)["Parameter"]["Value"]
    images = aws.call("describe_images", ImageIds=[image_id])["Images"]
    if not images:
        raise ProviderError(f"AMI {image_id} not found in {aws.region}", code="InvalidAMIID.NotFound")
    image = images[0]
    name = str(image.get("Name", ""))
    return Image(image_id, str(image.get("RootDeviceName", "/dev/xvda")), default_user(ref, name), name)


def resolve_subnet(aws: Aws, settings: Ec2ProviderConfig, az: str | None) -> Subnet:
    """The subnet for hosts in ``az``: ``subnet_id``, else the one tagged ``subnet_tags``, else the default one."""
    filters = [{"Name": "availability-zone", "Values": [az]}] if az else []
    if settings.subnet_id:
        found = aws.call("describe_subnets", SubnetIds=[settings.subnet_id])["Subnets"]
        if found and az and found[0]["AvailabilityZone"] != az:
            raise ConfigError(f"subnet {settings.subnet_id} is in {found[0]['AvailabilityZone']}, not in {az}: "
                              "drop `az` from the roles or give a subnet in that zone")
    elif settings.subnet_tags:
        tags = [{"Name": f"tag:{k}", "Values": [v]} for k, v in settings.subnet_tags.items()]
        found = aws.call("describe_subnets", Filters=[*tags, *filters])["Subnets"]
    else:
        found = aws.call("describe_subnets", Filters=[{"Name": "default-for-az", "Values": ["true"]}, *filters])[
            "Subnets"]
    if not found:
        raise ProviderError(f"no subnet for {az or 'any zone'} in {aws.region} ({_which(settings)})",
                            hint="give `subnet_id` or `subnet_tags` in the provider config, or create a default "
                                 "VPC (aws ec2 create-default-vpc)")
    subnet = sorted(found, key=lambda s: (s["AvailabilityZone"], s["SubnetId"]))[0]
    return Subnet(subnet["SubnetId"], subnet["AvailabilityZone"], subnet["VpcId"], subnet.get("CidrBlock", ""))


def _which(settings: Ec2ProviderConfig) -> str:
    if settings.subnet_id:
        return f"subnet_id {settings.subnet_id}"
    if settings.subnet_tags:
        return f"subnet_tags {settings.subnet_tags}"
    return "the default VPC"
