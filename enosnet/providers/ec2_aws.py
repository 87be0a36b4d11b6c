"""The one boundary between enosnet and AWS: clients, and botocore errors turned into ``ProviderError``.

Every AWS request of the EC2 provider goes through ``Aws.call``, so a
botocore exception is translated in exactly one place, with the AWS error
code and a hint. Credentials, region, profile and endpoint come from boto3's
standard chain (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``, ``~/.aws``); retries use boto3's standard or adaptive mode.

>>> hint_for("InsufficientInstanceCapacity").startswith("AWS has no spare capacity")
True
"""

from __future__ import annotations

import functools
import ipaddress
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bce
from botocore.client import BaseClient
from botocore.config import Config
from botocore.parsers import ResponseParserError

from enosnet.errors import ProviderError

#: Test hook, only for enosnet's own fault tests: when set to N, the process kills
#: itself with SIGKILL right after its N-th AWS response, to prove that a crash at
#: any point leaves enough state for ``destroy``.
KILL_AFTER_CALL_VAR = "ENOSNET_TEST_KILL_AFTER_CALL"

_QUOTA = ("the account's quota is reached: free capacity (`enosnet destroy --all --provider ec2`), use fewer or "
          "smaller hosts, or ask for an increase in the Service Quotas console (EC2)")
_CREDENTIALS = "the credentials are invalid or expired: refresh them (`aws sso login`, `aws configure`, AWS_PROFILE)"
_HINTS = {
    "NoCredentials": "configure AWS credentials: AWS_PROFILE, `aws configure`, or AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY",
    "NoRegion": "set `region` in the provider config, or AWS_DEFAULT_REGION, or --region",
    "EndpointUnreachable": "check the network, and AWS_ENDPOINT_URL if it is set",
    "InvalidAMIID.NotFound": "AMIs are regional: check `ami` for this region, or use an SSM parameter path "
                             "such as /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "InvalidAMIID.Malformed": "an AMI id looks like ami-0123456789abcdef0",
    "ParameterNotFound": "no such SSM public parameter in this region: check the `ami` path",
    "InsufficientInstanceCapacity": "AWS has no spare capacity for this instance type in this zone right now: "
                                    "try another `az` or `instance_type`, or retry later",
    "InsufficientHostCapacity": "AWS has no spare capacity in this zone right now: try another `az` or retry later",
    "InstanceLimitExceeded": _QUOTA,
    "VcpuLimitExceeded": _QUOTA,
    "MaxSpotInstanceCountExceeded": _QUOTA,
    "SecurityGroupLimitExceeded": _QUOTA,
    "KeyPairLimitExceeded": _QUOTA,
    "UnauthorizedOperation": "the credentials lack an IAM permission: see the EC2 section of the README "
                             "for the policy enosnet needs",
    "AccessDenied": "the credentials lack an IAM permission: see the EC2 section of the README",
    "AccessDeniedException": "the credentials lack an IAM permission: see the EC2 section of the README",
    "AuthFailure": _CREDENTIALS,
    "InvalidClientTokenId": _CREDENTIALS,
    "UnrecognizedClientException": _CREDENTIALS,
    "SignatureDoesNotMatch": _CREDENTIALS,
    "ExpiredToken": _CREDENTIALS,
    "RequestExpired": _CREDENTIALS,
    "OptInRequired": "the account is not subscribed to this service or region: opt in, or pick another region",
    "InvalidKeyPair.NotFound": "no such key pair in this region: check `key_name`, or drop it to let enosnet "
                               "generate one",
    "Unsupported": "the instance type or option is not offered in this zone: pick another `az`",
    "RequestLimitExceeded": "AWS throttled the requests beyond the retries: retry later, or set "
                            "`retry_mode: adaptive`",
    "Throttling": "AWS throttled the requests beyond the retries: retry later, or set `retry_mode: adaptive`",
}


def hint_for(code: str | None) -> str | None:
    """What to do about an AWS error code (None when there is nothing specific to say)."""
    return _HINTS.get(code or "")


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn botocore exceptions raised by ``action`` into ``ProviderError`` (code and hint included)."""
    try:
        yield
    except bce.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or exc)
        raise ProviderError(f"{action} failed: {message}", code=code, hint=hint_for(code)) from exc
    except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
        raise ProviderError(f"{action}: no AWS credentials found ({exc})", code="NoCredentials",
                            hint=hint_for("NoCredentials")) from exc
    except bce.NoRegionError as exc:
        raise ProviderError(f"{action}: no AWS region given", code="NoRegion", hint=hint_for("NoRegion")) from exc
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise ProviderError(f"{action}: cannot reach AWS: {exc}", code="EndpointUnreachable",
                            hint=hint_for("EndpointUnreachable")) from exc
    except ResponseParserError as exc:
        # e.g. an HTML error page: an endpoint that does not implement the operation, or a proxy in the way
        raise ProviderError(f"{action}: the endpoint sent an answer that is not AWS's: {str(exc)[:200]}",
                            code="UnreadableResponse", hint=hint_for("EndpointUnreachable")) from exc
    except bce.BotoCoreError as exc:
        raise ProviderError(f"{action} failed: {exc}", code=type(exc).__name__) from exc


class Aws:
    """boto3 clients for one region, and the single place AWS requests are made.

    ``calls`` counts the requests made, by ``service.Operation`` (a page of a
    paginated describe is one); ``attempts`` counts them with boto3's retries
    (a throttled request is attempted again): what a fleet costs in API calls.

    >>> aws = Aws("us-west-2")
    >>> aws.region
    'us-west-2'
    """

    def __init__(self, region: str | None = None, *, retry_mode: str = "standard",
                 max_attempts: int | None = None) -> None:
        with translated("reading the AWS configuration"):
            self.session = boto3.Session(region_name=region)
        name = self.session.region_name
        if not name:
            raise ProviderError("no AWS region given", code="NoRegion", hint=hint_for("NoRegion"))
        self.region: str = name
        # total attempts, as AWS_MAX_ATTEMPTS counts them; None leaves it to boto3's chain (env, profile)
        retries: Any = {"mode": retry_mode} if max_attempts is None else {"mode": retry_mode,
                                                                          "total_max_attempts": max_attempts}
        self._config = Config(retries=retries, connect_timeout=10, read_timeout=60)
        self._clients: dict[str, BaseClient] = {}
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()

    def client(self, service: str) -> BaseClient:
        """The botocore client for ``service`` (made once; tests may wrap it in a Stubber)."""
        if service not in self._clients:
            with translated(f"creating the {service} client"):
                made: BaseClient = self.session.client(service, config=self._config)  # type: ignore[call-overload]
            if os.environ.get(KILL_AFTER_CALL_VAR):
                made.meta.events.register("after-call", _kill_after_nth_call)
            made.meta.events.register("before-call", functools.partial(_count, self.calls))
            made.meta.events.register("before-send", functools.partial(_count, self.attempts))
            self._clients[service] = made
        return self._clients[service]

    def call(self, operation: str, *, service: str = "ec2", **params: Any) -> dict[str, Any]:
        """One AWS request, e.g. ``call("describe_instances", InstanceIds=[...])``; raises ``ProviderError``."""
        client = self.client(service)
        with translated(f"{service} {operation}"):
            answer: dict[str, Any] = getattr(client, operation)(**params)
        return answer

    def pages(self, operation: str, key: str, *, service: str = "ec2", **params: Any) -> list[dict[str, Any]]:
        """Every item under ``key`` of a paginated ``operation``."""
        client = self.client(service)
        items: list[dict[str, Any]] = []
        with translated(f"{service} {operation}"):
            for page in client.get_paginator(operation).paginate(**params):
                items.extend(page.get(key, []))
        return items

    @property
    def endpoint(self) -> str:
        return str(self.client("ec2").meta.endpoint_url)

    @property
    def endpoint_is_local(self) -> bool:
        """Whether the EC2 endpoint is on this machine (an emulator such as moto): its addresses are not real."""
        return endpoint_is_local(self.endpoint)


def _count(counter: Counter[str], event_name: str = "", **_: Any) -> None:
    """Count one request (``before-call``) or one attempt of it (``before-send``) as ``service.Operation``."""
    parts = event_name.split(".")
    counter[".".join(parts[1:3]) if len(parts) >= 3 else event_name] += 1


def endpoint_is_local(url: str) -> bool:
    """Whether ``url`` points at this machine.

    >>> endpoint_is_local("http://127.0.0.1:5000"), endpoint_is_local("https://ec2.us-west-2.amazonaws.com")
    (True, False)
    """
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_calls = 0


def _kill_after_nth_call(**_: Any) -> None:
    global _calls
    _calls += 1
    if _calls >= int(os.environ[KILL_AFTER_CALL_VAR]):
        os.kill(os.getpid(), signal.SIGKILL)
