"""The hash chain of audit records (AA7.1, AA7.2).

Each record of a stream carries mac_i = HMAC(key, mac_{i-1} || encode(record_i)), with 32 zero
octets as mac_0, and seq runs 1, 2, 3, ... So a record changed in place, deleted, or moved to
another position no longer verifies at a place the verifier can name; appending a forged
record needs the key. (Removing records from the end of a stream is the one change a chain
cannot show by itself: `ocspd audit verify` prints each stream's head so it can be kept
elsewhere, and checks every revocation request still has its record.)

The encoding is unambiguous: a version label, then every field length-prefixed in a fixed
order, integers as 8 signed big-endian octets, the time as UTC microseconds since 1970, and
`detail` as canonical JSON (sorted keys, no whitespace, UTF-8, no floats: a JSON store may
re-spell numbers but not integers or strings).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

MAC_BYTES = 32
GENESIS = bytes(MAC_BYTES)
_VERSION = b"ocspd-audit-v1"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

JsonValue: TypeAlias = "str | int | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"


class MacKey(Protocol):
    """What the chain needs of an audit key (ocspd.audit.mac.AuditKey)."""

    @property
    def key_id(self) -> str: ...

    def mac(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class ChainRecord:
    """One audit record, as the MAC covers it."""

    stream: str
    seq: int
    at: dt.datetime
    type: str
    actor: str
    outcome: str
    detail: Mapping[str, JsonValue] = field(default_factory=dict)
    key_id: str = ""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("audit record time must be timezone-aware (UTC)")
        if self.seq < 1:
            raise ValueError(f"audit record seq must be at least 1, got {self.seq}")


def canonical_json(detail: Mapping[str, JsonValue]) -> bytes:
    """Sorted keys, no whitespace, UTF-8; refuses what would not survive a JSON store."""
    _check_json(detail, "detail")
    return json.dumps(
        detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check_json(value: object, where: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL jsonb cannot store U+0000
            raise TypeError(f"{where}: NUL characters cannot be stored")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_json(k, where)
            _check_json(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
        return
    # Floats are refused: 1.0 and 1 are one number to a JSON store, two to this encoding.
    raise TypeError(f"{where}: {type(value).__name__} values cannot be in an audit record")


def micros(at: dt.datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode(record: ChainRecord) -> bytes:
    fields = (
        _VERSION,
        record.stream.encode("utf-8"),
        record.seq.to_bytes(8, "big", signed=True),
        micros(record.at).to_bytes(8, "big", signed=True),
        record.type.encode("utf-8"),
        record.actor.encode("utf-8"),
        record.outcome.encode("utf-8"),
        canonical_json(record.detail),
        record.key_id.encode("utf-8"),
    )
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def chain_mac(key: MacKey, previous: bytes, record: ChainRecord) -> bytes:
    if len(previous) != MAC_BYTES:
        raise ValueError(f"previous MAC has {len(previous)} octets, not {MAC_BYTES}")
    return key.mac(previous + encode(record))


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a stream, worded for an operator."""

    stream: str
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"stream {self.stream}" + (f" seq {self.seq}" if self.seq is not None else "")
        return f"{where}: {self.message}"


class KeyLookup(Protocol):
    def get(self, key_id: str) -> MacKey | None: ...


class StreamVerifier:
    """Walks one stream in seq order and stops at its first problem."""

    def __init__(self, stream: str, keys: KeyLookup) -> None:
        self.stream = stream
        self._keys = keys
        self.count = 0
        self.last_seq = 0
        self.head = GENESIS
        self.last_at: dt.datetime | None = None
        self.problem: Problem | None = None

    def feed(self, record: ChainRecord, mac: bytes) -> Problem | None:
        """Check the next record (records must come in seq order); None while all is well."""
        if self.problem is not None:
            return self.problem
        if record.stream != self.stream:
            raise ValueError(f"record of stream {record.stream} fed to stream {self.stream}")
        expected = self.last_seq + 1
        if record.seq != expected:
            # seq is a primary key with the stream: a jump can only be a removal.
            gap = (
                f"seq {expected}"
                if record.seq == expected + 1
                else f"seq {expected}..{record.seq - 1}"
            )
            noun = "record" if record.seq == expected + 1 else "records"
            return self._fail(None, f"{gap} missing ({noun} deleted)")
        key = self._keys.get(record.key_id)
        if key is None:
            return self._fail(
                record.seq,
                f"made with audit key {record.key_id}, which is not among the keys given "
                "(add a retired key with --key)",
            )
        if len(mac) != MAC_BYTES or mac != chain_mac(key, self.head, record):
            return self._fail(record.seq, "MAC mismatch (record modified or reordered)")
        self.count += 1
        self.last_seq = record.seq
        self.head = mac
        self.last_at = record.at
        return None

    def _fail(self, seq: int | None, message: str) -> Problem:
        self.problem = Problem(self.stream, seq, message)
        return self.problem
