"""Copy a backup to S3 and check it there: checksummed, skipping what is there, resumable.

Objects go to ``s3://BUCKET/PREFIX/<environment>/<backup>/<path>``. Every
upload carries a SHA-256 checksum that S3 verifies on arrival; files larger
than ``part_size`` go up in parts (multipart, a composite checksum). An object
already there with the expected checksum is skipped. An interrupted multipart
upload is resumed: its parts already in S3 whose checksum (or MD5 ETag)
matches are kept and only the others are sent. ``MANIFEST.sha256`` goes last,
so a manifest in S3 means every file before it arrived.

Errors from boto3 become ``ResultsError`` here, once, with what to do; the
local backup is never touched.

>>> S3Location.parse("s3://my-bucket/results/2026").key("incast", "20261122T030000Z", "results.db")
'results/2026/incast/20261122T030000Z/results.db'
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enosnet.errors import ConfigError, ResultsError
from enosnet.results.backup import MANIFEST, VerifyResult, read_manifest

PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix, from ``s3://BUCKET/PREFIX``."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise ConfigError(f"--s3 {url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
        bucket, _, prefix = url[5:].partition("/")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class UploadEvent:
    """Progress: ``kind`` is ``skipped``, ``uploaded``, ``part`` (sent) or ``part-reused`` (resume)."""

    kind: str
    key: str
    part: int = 0
    parts: int = 0
    size: int = 0


@dataclass(frozen=True)
class UploadResult:
    location: str
    uploaded: int
    skipped: int
    parts_sent: int
    parts_reused: int
    bytes_sent: int


def expected_checksum(path: Path, part_size: int = PART_SIZE) -> str:
    """The ChecksumSHA256 S3 stores for this file uploaded our way (composite ``…-N`` when multipart)."""
    size = path.stat().st_size
    if size <= part_size:
        return _b64(hashlib.sha256(path.read_bytes()).digest())
    digests = [hashlib.sha256(chunk).digest() for chunk in _chunks(path, part_size)]
    return f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _chunks(path: Path, part_size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            yield chunk


def _same_checksum(stored: str | None, expected: str) -> bool:
    """Compare ignoring the ``-N`` part count, which some S3 implementations leave out."""
    return stored is not None and stored.split("-")[0] == expected.split("-")[0]


def make_client() -> Any:
    """A boto3 S3 client configured from the environment (AWS_* variables, profiles, AWS_ENDPOINT_URL).

    A fresh session each time: boto3's default session would keep credentials
    it found earlier.
    """
    import boto3

    return boto3.session.Session().client("s3")


class _Translate:
    """Turns boto3's exceptions into ResultsError with a hint, in one place."""

    def __init__(self, location: S3Location) -> None:
        self.location = location

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            raise ResultsError(f"{self.location}: no AWS credentials found; set AWS_PROFILE or "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the local backup is intact)") from None
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "?")
            hint = {"NoSuchBucket": "the bucket does not exist: create it or fix --s3",
                    "404": "the bucket does not exist: create it or fix --s3",
                    "403": "access denied: check the credentials' permissions on this bucket",
                    "AccessDenied": "access denied: check the credentials' permissions on this bucket",
                    "InvalidAccessKeyId": "the AWS access key is not valid"}.get(code, str(exc))
            raise ResultsError(f"{self.location}: S3 refused [{code}]: {hint} (the local backup is intact)") from None
        if isinstance(exc, BotoCoreError):
            raise ResultsError(f"{self.location}: S3 failed: {exc} (the local backup is intact)") from None


def _remote_name(backup: Path) -> tuple[str, str]:
    """(environment name, backup name) of ``<env>/backup/<name>``."""
    return backup.parent.parent.name, backup.name


def upload_backup(backup: Path, location: S3Location, *, client: Any = None, part_size: int = PART_SIZE,
                  on_event: Callable[[UploadEvent], None] | None = None) -> UploadResult:
    """Upload every file of a backup (manifest last); see the module docstring."""
    if part_size < MIN_PART:
        raise ConfigError(f"part_size {part_size}: S3 needs parts of at least {MIN_PART} bytes")
    entries = read_manifest(backup)
    s3 = client or make_client()
    env_name, name = _remote_name(backup)
    counts = {"uploaded": 0, "skipped": 0, "part": 0, "part-reused": 0, "bytes": 0}

    def emit(event: UploadEvent) -> None:
        counts[event.kind] = counts.get(event.kind, 0) + 1
        if event.kind in ("uploaded", "part"):
            counts["bytes"] += event.size
        if on_event:
            on_event(event)

    with _Translate(location):
        s3.head_bucket(Bucket=location.bucket)
        for rel in [*sorted(entries), MANIFEST]:
            _upload_file(s3, location, backup / rel, location.key(env_name, name, rel), part_size, emit)
    return UploadResult(str(location), counts["uploaded"], counts["skipped"], counts["part"], counts["part-reused"],
                        counts["bytes"])


def _upload_file(s3: Any, location: S3Location, path: Path, key: str, part_size: int,
                 emit: Callable[[UploadEvent], None]) -> None:
    expected = expected_checksum(path, part_size)
    if _same_checksum(_stored_checksum(s3, location.bucket, key), expected):
        emit(UploadEvent("skipped", key))
        return
    size = path.stat().st_size
    metadata = {"part-size": str(part_size)}
    if size <= part_size:
        metadata["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        s3.put_object(Bucket=location.bucket, Key=key, Body=path.read_bytes(), ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=expected, Metadata=metadata)
    else:
        _multipart(s3, location.bucket, key, path, part_size, metadata, emit)
    emit(UploadEvent("uploaded", key, size=size if size <= part_size else 0))


def _stored_checksum(s3: Any, bucket: str, key: str) -> str | None:
    head = _head(s3, bucket, key)
    checksum = head.get("ChecksumSHA256") if head else None
    return str(checksum) if checksum else None


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's headers with its checksum, or None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head


def _multipart(s3: Any, bucket: str, key: str, path: Path, part_size: int, metadata: dict[str, str],
               emit: Callable[[UploadEvent], None]) -> None:
    upload_id, existing = _resumable_upload(s3, bucket, key)
    if upload_id is None:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                               Metadata=metadata)["UploadId"]
    total = -(-path.stat().st_size // part_size)
    done = []
    for number, chunk in enumerate(_chunks(path, part_size), start=1):
        checksum = _b64(hashlib.sha256(chunk).digest())
        old = existing.get(number)
        if old is not None and _part_matches(old, chunk, checksum):
            done.append({"PartNumber": number, "ETag": old["ETag"], "ChecksumSHA256": checksum})
            emit(UploadEvent("part-reused", key, number, total))
            continue
        sent = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk,
                              ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
        done.append({"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum})
        emit(UploadEvent("part", key, number, total, len(chunk)))
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done})


def _resumable_upload(s3: Any, bucket: str, key: str) -> tuple[str | None, dict[int, dict[str, Any]]]:
    """The newest unfinished multipart upload of ``key`` and its parts, if any."""
    uploads = [u for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) if u["Key"] == key]
    if not uploads:
        return None, {}
    upload = max(uploads, key=lambda u: u["Initiated"])
    parts: dict[int, dict[str, Any]] = {}
    for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload["UploadId"]):
        parts.update({p["PartNumber"]: p for p in page.get("Parts", [])})
    return upload["UploadId"], parts


def _part_matches(part: dict[str, Any], chunk: bytes, checksum: str) -> bool:
    if part.get("Size") != len(chunk):
        return False
    if part.get("ChecksumSHA256"):
        return bool(part["ChecksumSHA256"] == checksum)
    return bool(str(part.get("ETag", "")).strip('"') == hashlib.md5(chunk, usedforsecurity=False).hexdigest())


def verify_s3(backup: Path, location: S3Location, *, client: Any = None,
              part_size: int = PART_SIZE) -> VerifyResult:
    """Compare the checksums S3 holds for a backup with the manifest.

    S3 computes and checks an object's SHA-256 when it arrives; this compares
    that stored checksum with the manifest's (single-part objects) or with the
    composite computed from the local copy once it matches the manifest
    (multipart objects). A local copy that no longer matches cannot vouch for
    a multipart object, which is then reported as differing.
    """
    entries = read_manifest(backup)
    s3 = client or make_client()
    env_name, name = _remote_name(backup)
    differing, missing = [], []
    with _Translate(location):
        s3.head_bucket(Bucket=location.bucket)
        for rel, digest in sorted(entries.items()):
            head = _head(s3, location.bucket, location.key(env_name, name, rel))
            if head is None:
                missing.append(rel)
                continue
            size = int(head.get("Metadata", {}).get("part-size") or part_size)  # as uploaded
            expected = _expected_from_manifest(backup / rel, digest, size)
            if not _same_checksum(head.get("ChecksumSHA256"), expected):
                differing.append(rel)
    return VerifyResult(backup, len(entries), differing, missing, where=str(location))


def _expected_from_manifest(local: Path, digest: str, part_size: int) -> str:
    if local.is_file() and local.stat().st_size > part_size:
        from enosnet.results.backup import sha256_file

        return expected_checksum(local, part_size) if sha256_file(local) == digest else "local-copy-damaged"
    return _b64(bytes.fromhex(digest))
