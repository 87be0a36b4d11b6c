"""Copy a backup to S3 and check it there: checksummed, skipping what is there, resumable.

Objects go to ``s3://BUCKET/PREFIX/<environment>/<backup>/<path>``. Every
upload carries a SHA-256 checksum that S3 verifies on arrival; files larger
than ``part_size`` go up in parts (multipart, a composite checksum). An object
already there with the expected checksum is skipped; a file unchanged since the
previous backup, already in S3, is copied there server-side (nothing is sent),
so a second backup uploads only what changed. An interrupted multipart
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
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enosnet.errors import ConfigError, ResultsError
from enosnet.results.backup import INFO, MANIFEST, VerifyResult, files_holding, read_manifest, sha256_file

PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024
MAX_COPY = 5 * 1024**3  # S3's limit for a single-request server-side copy


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
    """Progress: ``kind`` is ``skipped``, ``copied`` (server-side, from the previous backup), ``uploaded``,
    ``part`` (sent) or ``part-reused`` (kept from an interrupted upload)."""

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
    copied: int = 0


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
                  on_event: Callable[[UploadEvent], None] | None = None,
                  keep_out: Sequence[bytes] = ()) -> UploadResult:
    """Upload every file of a backup (manifest last); see the module docstring.

    ``keep_out`` (``agent_keys(env)``): when any file holds one of these, nothing is uploaded.
    """
    if part_size < MIN_PART:
        raise ConfigError(f"part_size {part_size}: S3 needs parts of at least {MIN_PART} bytes")
    entries = read_manifest(backup)
    holding = files_holding(backup, keep_out)
    if holding:
        raise ResultsError(f"{backup}: {len(holding)} files hold the agents' secret or keys "
                           f"({', '.join(holding[:5])}); nothing uploaded: delete them from the backup first")
    before, before_entries = _previous_entries(backup)
    s3 = client or make_client()
    env_name, name = _remote_name(backup)
    counts = {"uploaded": 0, "skipped": 0, "copied": 0, "part": 0, "part-reused": 0, "bytes": 0}

    def emit(event: UploadEvent) -> None:
        counts[event.kind] = counts.get(event.kind, 0) + 1
        if event.kind in ("uploaded", "part"):
            counts["bytes"] += event.size
        if on_event:
            on_event(event)

    with _Translate(location):
        s3.head_bucket(Bucket=location.bucket)
        for rel in [*sorted(entries), MANIFEST]:
            digest = entries.get(rel) or sha256_file(backup / rel)
            unchanged = before is not None and before_entries.get(rel) == digest
            source = location.key(env_name, before, rel) if before is not None and unchanged else None
            _upload_file(s3, location.bucket, _File(backup / rel, location.key(env_name, name, rel), digest,
                                                    part_size), source, emit)
    return UploadResult(str(location), counts["uploaded"], counts["skipped"], counts["part"], counts["part-reused"],
                        counts["bytes"], counts["copied"])


@dataclass(frozen=True)
class _File:
    """One file to put in S3 and the checksums S3 may hold for it."""

    path: Path
    key: str
    digest: str
    part_size: int

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def accepts(self, stored: str | None) -> bool:
        """True when ``stored`` is this content's full SHA-256 (single part or server-side copy) or composite."""
        if stored is None:
            return False
        value = stored.split("-")[0]  # the part count, which some implementations leave out
        if value == _b64(bytes.fromhex(self.digest)):
            return True
        return self.size > self.part_size and value == expected_checksum(self.path, self.part_size).split("-")[0]


def _previous_entries(backup: Path) -> tuple[str | None, dict[str, str]]:
    """The previous backup's name and manifest, when it is still there (for server-side copies)."""
    try:
        name = json.loads((backup / INFO).read_text()).get("previous")
        return (name, read_manifest(backup.parent / name)) if name else (None, {})
    except (OSError, ValueError, ResultsError):
        return None, {}


def _upload_file(s3: Any, bucket: str, file: _File, copy_from: str | None,
                 emit: Callable[[UploadEvent], None]) -> None:
    if file.accepts(_stored_checksum(s3, bucket, file.key)):
        emit(UploadEvent("skipped", file.key))
        return
    if copy_from and file.size <= MAX_COPY and file.accepts(_stored_checksum(s3, bucket, copy_from)):
        # unchanged since the previous backup, which is already in S3: copy there, send nothing
        s3.copy_object(Bucket=bucket, Key=file.key, CopySource={"Bucket": bucket, "Key": copy_from},
                       ChecksumAlgorithm="SHA256", MetadataDirective="COPY")
        emit(UploadEvent("copied", file.key))
        return
    metadata = {"part-size": str(file.part_size), "sha256": file.digest}
    if file.size <= file.part_size:
        s3.put_object(Bucket=bucket, Key=file.key, Body=file.path.read_bytes(), ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=expected_checksum(file.path, file.part_size), Metadata=metadata)
        emit(UploadEvent("uploaded", file.key, size=file.size))
    else:
        _multipart(s3, bucket, file.key, file.path, file.part_size, metadata, emit)
        emit(UploadEvent("uploaded", file.key))


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
            local = backup / rel
            trusted = local.is_file() and sha256_file(local) == digest  # composite checksums need the parts
            file = _File(local if trusted else Path(os.devnull), "", digest, size)
            if not file.accepts(head.get("ChecksumSHA256")):
                differing.append(rel)
    return VerifyResult(backup, len(entries), differing, missing, where=str(location))
