"""The wire format: round trips, every drop reason, the replay guard, and a fuzzed parser."""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from enosnet.coordinator.agent.wire import (
    HEADER,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    TAG_SIZE,
    MessageType,
    ReplayGuard,
    WireError,
    decode,
    encode,
    env_hash,
)

KEY = b"k" * 32
ENV = env_hash("test-env")


def make(payload: dict[str, object] | None = None, **fields: object) -> bytes:
    args: dict[str, object] = {"key": KEY, "env": ENV, "worker": "w-1", "session": 9, "seq": 1}
    args.update(fields)
    return encode(MessageType.PREPARE, payload if payload is not None else {"run": "r1"}, **args)  # type: ignore[arg-type]


def reason_of(data: bytes, key: bytes = KEY, env: bytes = ENV) -> str:
    with pytest.raises(WireError) as info:
        decode(data, key=key, env=env)
    return info.value.reason


def test_round_trip_keeps_every_field() -> None:
    raw = make({"run": "r1", "params": {"port": 5201}}, seq=42, ack=7, ts=123)
    msg = decode(raw, key=KEY, env=ENV)
    assert (msg.type, msg.worker, msg.session, msg.seq, msg.ack, msg.ts) == (MessageType.PREPARE, "w-1", 9, 42, 7, 123)
    assert msg.payload == {"run": "r1", "params": {"port": 5201}}


def test_large_payload_is_compressed_and_still_fits() -> None:
    servers = [f"198.18.0.{i}:4433" for i in range(2, 202)]
    raw = make({"params": {"servers": servers}})
    assert len(raw) <= MAX_DATAGRAM
    assert decode(raw, key=KEY, env=ENV).payload["params"]["servers"] == servers


def test_payload_that_cannot_fit_is_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        make({"blob": os.urandom(1500).hex()})


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda raw: raw[:50], "truncated"),
        (lambda raw: raw[:-1], "truncated"),
        (lambda raw: raw + b"x" * (MAX_DATAGRAM + 1 - len(raw)), "oversized"),
        (lambda raw: b"XXXX" + raw[4:], "bad_magic"),
        (lambda raw: raw[:4] + b"\x09" + raw[5:], "bad_version"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "bad_mac"),
        (lambda raw: raw[:HEADER.size] + bytes([raw[HEADER.size] ^ 1]) + raw[HEADER.size + 1:], "bad_mac"),
    ],
)
def test_damaged_datagrams_are_dropped_by_reason(mangle: object, reason: str) -> None:
    assert reason_of(mangle(make())) == reason  # type: ignore[operator]


def test_forged_with_another_key_or_env_is_dropped() -> None:
    assert reason_of(make(key=b"x" * 32)) == "bad_mac"
    assert reason_of(make(), env=env_hash("other")) == "wrong_env"


def test_authenticated_but_unknown_type_or_bad_payload_is_dropped() -> None:
    raw = bytearray(make())
    raw[5] = 99
    body = bytes(raw[:-TAG_SIZE])
    import hashlib
    import hmac
    resigned = body + hmac.new(KEY, body, hashlib.sha256).digest()
    assert reason_of(resigned) == "bad_type"
    header = HEADER.pack(b"ENSN", 1, 1, 0, 0, ENV, b"w", 1, 1, 0, 1, 5)
    data = header + b"[1,2]"
    assert reason_of(data + hmac.new(KEY, data, hashlib.sha256).digest()) == "bad_payload"
    zip_bomb_header = HEADER.pack(b"ENSN", 1, 1, 1, 0, ENV, b"w", 1, 1, 0, 1, 4)
    data = zip_bomb_header + b"\x78\x9c\x00\x00"
    assert reason_of(data + hmac.new(KEY, data, hashlib.sha256).digest()) == "bad_payload"


def test_replay_guard_accepts_reordering_once_and_rejects_replays() -> None:
    guard = ReplayGuard(window_s=30)
    now = time.time_ns()
    assert [guard.check(1, seq, now, now) for seq in (5, 3, 4, 5, 3)] == [None, None, None, "replayed", "replayed"]
    assert guard.check(1, 200, now, now) is None
    assert guard.check(1, 100, now, now) == "replayed"  # more than 64 behind: too old
    assert guard.check(2, 1, now, now) is None  # another session has its own numbers
    assert guard.check(3, 1, now - 31 * 10**9, now) == "stale"
    assert guard.check(3, 2, now + 31 * 10**9, now) == "stale"


def test_replay_guard_forgets_oldest_sessions_beyond_its_bound() -> None:
    guard = ReplayGuard(window_s=30, max_sessions=4)
    now = time.time_ns()
    for session in range(10):
        guard.check(session, 1, now, now)
    assert len(guard._sessions) == 4


# The parser faces the network: whatever arrives, it returns a Message or raises WireError,
# nothing else. Raw random bytes mostly die at the length/magic checks, so the second
# property mutates valid datagrams to reach the deeper checks too. Hypothesis costs about
# 0.5 ms per example here, so it explores 5,000 cases per property (shrinking on failure),
# and a seeded loop adds 100,000 mutated datagrams at about 10 us each.


@settings(max_examples=5_000, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=MAX_DATAGRAM + 64))
def test_fuzz_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data, key=KEY, env=ENV)


VALID = make({"run": "r1", "params": {"servers": [f"198.18.0.{i}:4433" for i in range(60)]}})


@settings(max_examples=5_000, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255), st.integers(0, len(VALID)))
def test_fuzz_mutated_datagrams_are_dropped_never_crash(position: int, xor: int, cut: int) -> None:
    mutated = bytearray(VALID)
    mutated[position] ^= xor
    for data in (bytes(mutated), bytes(mutated[:cut])):
        with pytest.raises(WireError):
            decode(data, key=KEY, env=ENV)


def test_max_payload_constant_matches_layout() -> None:
    assert HEADER.size + MAX_PAYLOAD + TAG_SIZE == MAX_DATAGRAM


def test_fuzz_100k_seeded_mutations_never_crash_the_parser() -> None:
    rng = random.Random(20261122)
    reasons: dict[str, int] = {}
    for _ in range(100_000):
        data = bytearray(VALID)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        cut = rng.choice((len(data), rng.randrange(len(data) + 1), len(data) + rng.randint(1, 200)))
        raw = bytes(data[:cut]) + os.urandom(max(0, cut - len(data)))
        try:
            decode(raw, key=KEY, env=ENV)
        except WireError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        else:
            raise AssertionError("a mutated datagram was accepted")
    assert sum(reasons.values()) == 100_000
    assert {"bad_mac", "truncated", "bad_magic"} <= set(reasons)


def test_the_agent_port_is_one_value_for_the_library_the_config_and_the_role() -> None:
    import yaml

    from enosnet.config import AgentSettings
    from enosnet.coordinator.agent.wire import DEFAULT_PORT

    role = yaml.safe_load((Path(__file__).parents[1] / "roles/enosnet_agent/defaults/main.yml").read_text())
    assert DEFAULT_PORT == AgentSettings().port == role["enosnet_agent_port"] == 7700


def test_the_role_renders_the_same_agent_config_fields_and_defaults_as_the_library() -> None:
    import yaml

    from enosnet.coordinator.catalogue import agent_config

    folder = Path(__file__).parents[1] / "roles/enosnet_agent"
    rendered = yaml.safe_load((folder / "vars/main.yml").read_text())["enosnet_agent_config"]
    defaults = yaml.safe_load((folder / "defaults/main.yml").read_text())
    library = agent_config("w", role="r", secret="s" * 16, env_id="e", actions={})
    assert set(rendered) == set(library)
    for key in ("replay_window_s", "sample_interval_s"):
        assert defaults[f"enosnet_agent_{key}"] == library[key]
