"""Backups: round trip, corruption found by --verify, incremental links, consistent DB copy, S3 via moto's server."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from enosnet.coordinator.agent.wire import worker_key
from enosnet.environment import Environment
from enosnet.errors import ResultsError
from enosnet.model import Host, Roles
from enosnet.results.backup import (
    MANIFEST,
    HostCollection,
    agent_keys,
    backups,
    make_backup,
    playbook_collector,
    read_manifest,
    verify_backup,
)
from enosnet.results.s3 import MIN_PART, S3Location, UploadEvent, make_client, upload_backup, verify_s3
from enosnet.results.store import ExperimentRecord, HostMeta, ResultsStore
from enosnet.results.synthetic import fill_synthetic

ENOSNET = [sys.executable, "-c", "from enosnet.cli import main; main()"]
NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    environment = Environment(tmp_path / "incast").create()
    environment.config_file.write_text("name: incast\nprovider: {kind: local}\nroles: {server: 1, client: 4}\n")
    environment.save_state({"kind": "local", "provider": {"hosts": ["s", "c"]}})
    environment.inventory_file.write_text("all: {hosts: {server-0: {ansible_host: 198.18.0.2}}}\n")
    (environment.root / "incast.yaml").write_text("name: incast\ndriver: iperf3\n")
    environment.ensure_keypair()
    environment.secret()
    run = environment.runs_dir / "20261122T020000Z-bench" / "client-0"
    run.mkdir(parents=True)
    (run / "iperf3.json").write_text('{"end": {"sum_received": {"bits_per_second": 9.4e9}}}\n')
    (environment.logs_dir / "bench.log").write_text("started\n")
    with ResultsStore.open(environment.db_file) as store:
        fill_synthetic(store, repetitions=2)
    return environment


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def test_round_trip_copies_everything_but_secrets(env: Environment) -> None:
    made = make_backup(env, now=NOW)
    assert made.path == env.root / "backup" / "20261122T030000Z" and made.previous is None
    names = set(read_manifest(made.path))
    assert {"results.db", "config.yaml", "state.json", "inventory.yaml", "incast.yaml", "BACKUP.json",
            "runs/20261122T020000Z-bench/client-0/iperf3.json", "logs/bench.log"} == names
    assert not any(n.startswith("ssh") or n == "secret" for n in names)
    assert verify_backup(made.path).ok
    assert "skipped (no host collector given)" in made.notes[-1]
    with ResultsStore.open(made.path / "results.db", create=False) as copy:
        assert len(copy.runs()) == 8
    checked = subprocess.run(["sha256sum", "--strict", "-c", MANIFEST], cwd=made.path, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_experiment_files_are_copied_while_unchanged(env: Environment, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: sweep\nrepetitions: 3\n")
    digest = hashlib.sha256(spec.read_bytes()).hexdigest()
    gone = tmp_path / "gone.yaml"
    other = tmp_path / "other.yml"
    other.write_text("name: other\n")
    other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    with ResultsStore.open(env.db_file) as store:
        store.begin_experiment(ExperimentRecord(name="sweep", file_hash=digest, file_path=str(spec)))
        store.begin_experiment(ExperimentRecord(name="gone", file_hash="0" * 64, file_path=str(gone)))
        exp = store.begin_experiment(ExperimentRecord(name="other", file_hash=other_digest))  # path only in metadata
        store.add_metadata(exp, [HostMeta("server-0", "experiment.file", str(other), "enosnet")])
    made = make_backup(env, now=NOW)
    copied = made.path / f"experiments/sweep-{digest[:12]}.yaml"
    assert copied.read_text() == spec.read_text() and f"experiments/sweep-{digest[:12]}.yaml" in read_manifest(
        made.path)
    assert (made.path / f"experiments/other-{other_digest[:12]}.yml").read_text() == "name: other\n"
    assert f"experiment file {gone} (experiment gone) no longer exists" in made.notes
    spec.write_text("name: sweep\nrepetitions: 30\n")
    later = make_backup(env, now=NOW)
    assert f"experiment file {spec} changed since experiment sweep ran: not copied" in later.notes
    assert verify_backup(made.path).ok and verify_backup(later.path).ok


def test_verify_names_corrupted_and_missing_files(env: Environment) -> None:
    made = make_backup(env, now=NOW)
    with _writable(made.path / "runs/20261122T020000Z-bench/client-0/iperf3.json").open("r+b") as f:
        f.write(b"X")
    (made.path / "logs/bench.log").unlink()
    (made.path / "stray.txt").write_text("?")
    result = verify_backup(made.path)
    assert not result.ok
    assert result.differing == ["runs/20261122T020000Z-bench/client-0/iperf3.json"]
    assert result.missing == ["logs/bench.log"] and result.extra == ["stray.txt"]
    done = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--verify"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "iperf3.json" in done.stdout and "bench.log" in done.stdout and "BAD" in done.stdout


def test_second_backup_links_what_did_not_change(env: Environment) -> None:
    first = make_backup(env, now=NOW)
    env.config_file.write_text("name: incast\n# edited\n")
    newer = env.runs_dir / "20261122T030000Z-bench" / "client-0"
    newer.mkdir(parents=True)
    (newer / "iperf3.json").write_text("{}\n")
    second = make_backup(env, now=NOW)  # same second: a new name, never the old folder
    assert second.path.name == "20261122T030000Z-1" and second.previous == first.path
    assert backups(env) == [first.path, second.path]
    old_run = "runs/20261122T020000Z-bench/client-0/iperf3.json"
    assert os.stat(first.path / old_run).st_ino == os.stat(second.path / old_run).st_ino
    assert os.stat(first.path / "results.db").st_ino == os.stat(second.path / "results.db").st_ino
    assert os.stat(first.path / "config.yaml").st_ino != os.stat(second.path / "config.yaml").st_ino
    assert "edited" in (second.path / "config.yaml").read_text() and "edited" not in (
        first.path / "config.yaml").read_text()
    assert second.new_files == 3  # config.yaml, the new run file, BACKUP.json
    assert verify_backup(first.path).ok and verify_backup(second.path).ok


def test_database_copy_is_consistent_during_a_write(env: Environment) -> None:
    writer = sqlite3.connect(env.db_file, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM samples")  # uncommitted: must not be in the copy
        made = make_backup(env, now=NOW)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with sqlite3.connect(made.path / "results.db") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT count(*) FROM samples").fetchone()[0] > 0


def test_host_collector_is_pluggable(env: Environment) -> None:
    def collect(dest: Path) -> HostCollection:
        (dest / "client-0").mkdir()
        (dest / "client-0" / "agent.log").write_text("ready\n")
        return HostCollection(True, "1 host")

    made = make_backup(env, collect_hosts=collect, now=NOW)
    assert "hosts/client-0/agent.log" in read_manifest(made.path)
    assert made.notes[-1] == "host logs and agent state: collected: 1 host"

    def broken(dest: Path) -> HostCollection:
        raise RuntimeError("ssh: host unreachable")

    again = make_backup(env, collect_hosts=broken, now=NOW)
    assert "FAILED: ssh: host unreachable" in again.notes[-1] and verify_backup(again.path).ok
    missing = make_backup(env, collect_hosts=playbook_collector(env, env.root / "nope.yml"), now=NOW)
    assert "skipped: no playbook" in missing.notes[-1]


def test_playbook_collector_runs_ansible(env: Environment, tmp_path: Path) -> None:
    """The default collector through the remote layer's run_playbook, on a local-connection host (no network)."""
    here = Host("127.0.0.1", alias="here", extra={"ansible_connection": "local",
                                                  "ansible_python_interpreter": sys.executable})
    env.update_state(roles=Roles({"server": [here]}).to_dict(), acquired=True)  # as a deploy leaves it
    source = tmp_path / "agent.state"
    source.write_text("state: ready\n")
    playbook = tmp_path / "backup.yml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.fetch:\n        src: {source}\n"
        "        dest: \"{{ backup_dir }}/{{ inventory_hostname }}/agent.state\"\n        flat: true\n")
    made = make_backup(env, collect_hosts=playbook_collector(env, playbook), now=NOW)
    assert (made.path / "hosts/here/agent.state").read_text() == "state: ready\n"
    assert made.notes[-1] == "host logs and agent state: collected: 1 hosts (here)"
    env.update_state(released=True)
    skipped = make_backup(env, collect_hosts=playbook_collector(env, playbook), now=NOW)
    assert skipped.notes[-1] == "host logs and agent state: skipped: no hosts deployed"


def test_an_interrupted_backup_leaves_nothing(env: Environment) -> None:
    def interrupted(dest: Path) -> HostCollection:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_backup(env, collect_hosts=interrupted, now=NOW)
    assert list((env.root / "backup").iterdir()) == []


# ── S3, against moto's server over HTTP ──────────────────────────────────────


def _bucket(name: str = "enosnet-backups") -> S3Location:
    boto3.client("s3").create_bucket(Bucket=name)
    return S3Location.parse(f"s3://{name}/lab")


def test_s3_upload_verify_and_skip(env: Environment, aws: object) -> None:
    location = _bucket()
    made = make_backup(env, now=NOW)
    first = upload_backup(made.path, location)
    assert first.uploaded == len(read_manifest(made.path)) + 1 and first.skipped == 0
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="enosnet-backups")["Contents"]}
    assert "lab/incast/20261122T030000Z/results.db" in keys and "lab/incast/20261122T030000Z/MANIFEST.sha256" in keys
    assert verify_s3(made.path, location).ok
    again = upload_backup(made.path, location)
    assert again.uploaded == 0 and again.skipped == first.uploaded


def test_second_backup_sends_only_what_changed(env: Environment, aws: object) -> None:
    location = _bucket()
    big = env.runs_dir / "20261122T020000Z-bench" / "client-0" / "pcap.bin"
    big.write_bytes(os.urandom(MIN_PART + 1024))  # multipart: its S3 checksum is a composite
    first = make_backup(env, now=NOW)
    upload_backup(first.path, location, part_size=MIN_PART)
    env.config_file.write_text("name: incast\n# edited\n")
    second = make_backup(env, now=NOW)
    events: list[UploadEvent] = []
    sent = upload_backup(second.path, location, part_size=MIN_PART, on_event=events.append)
    uploaded = sorted(e.key.rsplit("/", 1)[-1] for e in events if e.kind == "uploaded")
    assert uploaded == ["BACKUP.json", "MANIFEST.sha256", "config.yaml"]
    assert sent.copied == len(read_manifest(second.path)) - 2 and sent.parts_sent == 0
    assert verify_s3(first.path, location, part_size=MIN_PART).ok
    assert verify_s3(second.path, location, part_size=MIN_PART).ok  # copies hold full-object checksums


def test_s3_verify_names_corrupted_and_missing_objects(env: Environment, aws: object) -> None:
    location = _bucket()
    made = make_backup(env, now=NOW)
    upload_backup(made.path, location)
    s3 = boto3.client("s3")
    s3.put_object(Bucket="enosnet-backups", Key="lab/incast/20261122T030000Z/config.yaml", Body=b"tampered",
                  ChecksumAlgorithm="SHA256")
    s3.delete_object(Bucket="enosnet-backups", Key="lab/incast/20261122T030000Z/logs/bench.log")
    result = verify_s3(made.path, location)
    assert result.differing == ["config.yaml"] and result.missing == ["logs/bench.log"]
    done = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--verify", "--s3", str(location)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "config.yaml" in done.stdout and "OK" in done.stdout  # local copy is fine


class Interrupt(Exception):
    pass


def test_interrupted_multipart_upload_resumes(env: Environment, aws: object) -> None:
    location = _bucket()
    big = env.runs_dir / "20261122T020000Z-bench" / "client-0" / "pcap.bin"
    big.write_bytes(os.urandom(2 * MIN_PART + 1024 * 1024))  # three parts: 5 + 5 + 1 MiB
    made = make_backup(env, now=NOW)
    events: list[UploadEvent] = []

    def stop_after_first_part(event: UploadEvent) -> None:
        events.append(event)
        if event.kind == "part":
            raise Interrupt

    with pytest.raises(Interrupt):
        upload_backup(made.path, location, part_size=MIN_PART, on_event=stop_after_first_part)
    assert [e.kind for e in events if "pcap" in e.key] == ["part"]
    events.clear()
    resumed = upload_backup(made.path, location, part_size=MIN_PART, on_event=events.append)
    big_events = [(e.kind, e.part) for e in events if e.key.endswith("pcap.bin")]
    assert big_events == [("part-reused", 1), ("part", 2), ("part", 3), ("uploaded", 0)]
    assert resumed.parts_reused == 1 and resumed.parts_sent == 2
    body = boto3.client("s3").get_object(Bucket="enosnet-backups",
                                         Key="lab/incast/20261122T030000Z/runs/20261122T020000Z-bench/client-0/"
                                             "pcap.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert verify_s3(made.path, location).ok
    assert upload_backup(made.path, location, part_size=MIN_PART).uploaded == 0  # everything already there


def test_missing_bucket_is_clear_and_keeps_the_local_backup(env: Environment, aws: object) -> None:
    made = make_backup(env, now=NOW)
    with pytest.raises(ResultsError, match=r"bucket does not exist.*local backup is intact"):
        upload_backup(made.path, S3Location.parse("s3://no-such-bucket/x"))
    assert verify_backup(made.path).ok


def test_missing_credentials_are_clear(env: Environment, aws: object, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    made = make_backup(env, now=NOW)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ResultsError, match="no AWS credentials"):
        upload_backup(made.path, S3Location("enosnet-backups", "x"), client=make_client())
    assert verify_backup(made.path).ok


def test_cli_backup_to_s3_then_verify(env: Environment, aws: object) -> None:
    location = _bucket()
    done = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--s3", str(location)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uploaded" in done.stdout and "skipped" in done.stdout, done.stdout  # the host step: skipped, noted
    checked = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--verify", "--s3", str(location)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [line.split()[0] for line in checked.stdout.splitlines()] == ["OK", "OK"]


def test_cli_name_without_s3_or_verify_is_a_usage_error(env: Environment) -> None:
    done = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--name", "x"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--name without --verify needs --s3" in done.stderr


def test_s3_url_is_validated() -> None:
    with pytest.raises(ValueError, match="s3://BUCKET"):
        S3Location.parse("https://bucket/x")


@pytest.mark.hosts
def test_backup_fetches_host_state_with_the_real_playbook(local_hosts: Any) -> None:
    """playbooks/backup.yml on real local hosts running the agent: their agent state lands in hosts/<host>/."""
    from enosnet.bench.drivers import default_actions
    from enosnet.bench.runner import agent_access
    from enosnet.testing import start_agents_over_ssh

    deployment = local_hosts({"server": 1, "client": 1}, name="bk")
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, actions=default_actions(),
                          port=access.port)
    playbook = Path(__file__).parent.parent / "playbooks" / "backup.yml"
    made = make_backup(deployment.env, collect_hosts=playbook_collector(deployment.env, playbook))
    names = sorted(h.name for h in deployment.roles.all())
    assert made.notes[-1] == f"host logs and agent state: collected: 2 hosts ({', '.join(names)})"
    fetched = [rel for rel in read_manifest(made.path) if rel.startswith("hosts/")]
    for name in names:
        assert any(rel.startswith(f"hosts/{name}/var/lib/enosnet-agent/") for rel in fetched), fetched
    assert verify_backup(made.path).ok
    secret = access.secret.encode()  # the agents' config stays on the hosts: no secret in the backup
    assert [p for p in made.path.rglob("*") if p.is_file() and secret in p.read_bytes()] == []


def test_a_backup_holding_an_agent_key_is_not_uploaded(env: Environment, aws: object) -> None:
    roles = Roles({"client": [Host("198.18.0.3", alias="client-0")]})
    env.save_state({"kind": "local", "roles": roles.to_dict(), "acquired": True})
    key = worker_key(env.secret(), "client-0")  # what the agent's config on client-0 holds
    (env.runs_dir / "20261122T020000Z-bench" / "client-0" / "leak.txt").write_text(f"key={key}\n")
    made = make_backup(env, now=NOW)
    location = _bucket()
    with pytest.raises(ResultsError, match=r"1 files hold the agents' secret or keys \(runs/.*/leak.txt\)"):
        upload_backup(made.path, location, keep_out=agent_keys(env))
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket="enosnet-backups")
    idle = env.root.parent / "idle.yml"  # no host is contacted: these hosts do not exist
    idle.write_text("- hosts: all\n  gather_facts: false\n  tasks: []\n")
    done = subprocess.run([*ENOSNET, "backup", "--env", str(env.root), "--s3", str(location), "--playbook", str(idle)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "nothing uploaded" in done.stderr, done.stdout + done.stderr
