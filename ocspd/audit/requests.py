"""Audit records of OCSP requests (RS3.1, pkio80): encoding, chaining, segments (AA7.1-2).

One record per request served: time, client and server address, method, outcome, whether a
nonce was present, the CertIDs asked about and the status given for each, the SHA-256 of
the response sent, and the key hash of the responder certificate that signed it.

Each responder worker writes one stream of records. Record i carries

    mac_i = HMAC-SHA256(stream key, mac_{i-1} || encode(record_i)),  mac_0 = 32 zero octets

where the stream key is derived once per stream from the audit key (a MAC over the stream's
name), so a PKCS#11 audit key is asked once per worker, not once per request, and never
leaves its token. Records are stored in segments (a run of consecutive records per row, see
`unpack` for the layout); `SegmentVerifier` walks a stream's segments and names the first
record that was modified, deleted or moved.

The encoding is unambiguous: a version octet, seq and time as 8-octet integers, the nonce
flag, then every variable field with a 2-octet length, CertIDs and statuses counted. The
fields that describe the answer (hash, signer, CertIDs, statuses) come last and are the same
bytes for every request a cached response answers, so they are encoded once per response
(`answer_fields`). A request costs the hot path one tuple appended to a list; the flush
chains them in C (ocspd.audit._chain, OpenSSL's SHA-256), and a segment stores each
distinct field value once, so a record takes 53 octets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ocspd.audit.chain import GENESIS, MAC_BYTES, MacKey, Problem

_VERSION = 2
_HEAD = struct.Struct(">BqqB")  # version, seq, at (µs), nonce
_LEN = struct.Struct(">H")
_RECORD_LEN = struct.Struct(">I")
# Storage format 3 of a segment (see unpack): per record at_us, nonce, three part numbers.
_SEGMENT_FORMAT = 3
_STORED_HEAD = struct.Struct(">qBIII")
_STORED_BYTES = _STORED_HEAD.size + MAC_BYTES
_STREAM_KEY_LABEL = b"ocspd ocsp-audit stream key v1\x00"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    seq: int
    at_us: int  # UTC, microseconds since 1970
    client: str
    server: str
    method: str
    outcome: str
    nonce: bool
    cert_ids: tuple[bytes, ...]  # DER, as received
    statuses: tuple[str, ...]  # one per CertID answered (none for an error response)
    response_sha256: bytes
    signer: bytes  # key hash of the signing responder certificate; empty if unsigned

    @property
    def at(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.at_us)


def describe_cert_id(der: bytes) -> str:
    """A CertID for people: hash algorithm, issuer key hash (first octets), serial in hex."""
    from asn1crypto.ocsp import CertId

    try:
        cert_id = CertId.load(der, strict=True)
        algorithm = cert_id["hash_algorithm"]["algorithm"].native
        key_hash = cert_id["issuer_key_hash"].native.hex()[:16]
        serial = cert_id["serial_number"].native
    except ValueError:
        return "unreadable:" + der.hex()[:32]
    return f"{algorithm}:{key_hash}:{serial:X}"


def stream_key(key: MacKey, stream: str) -> bytes:
    """The stream's MAC key: derived, so the audit key itself is used once per stream."""
    return key.mac(_STREAM_KEY_LABEL + stream.encode())


def field(value: bytes) -> bytes:
    """One variable-length field: its length in 2 octets, then the value."""
    return _LEN.pack(len(value)) + value


def answer_fields(
    response_sha256: bytes, signer: bytes, cert_ids: Sequence[bytes], statuses: Sequence[str]
) -> bytes:
    """The encoded tail of a record: what was answered. The same for every request that one
    response answers, so callers keep it with the response."""
    return b"".join(
        (
            field(response_sha256),
            field(signer),
            _LEN.pack(len(cert_ids)),
            *(field(c) for c in cert_ids),
            _LEN.pack(len(statuses)),
            *(field(s.encode()) for s in statuses),
        )
    )


def encode_parts(seq: int, at_us: int, nonce: bool, fields: bytes) -> bytes:
    """A record from its head and its pre-encoded fields (client, server, method, outcome,
    then answer_fields)."""
    return _HEAD.pack(_VERSION, seq, at_us, nonce) + fields


def encode(record: RequestRecord) -> bytes:
    return encode_parts(
        record.seq,
        record.at_us,
        record.nonce,
        b"".join(
            (
                field(record.client.encode()),
                field(record.server.encode()),
                field(record.method.encode()),
                field(record.outcome.encode()),
                answer_fields(
                    record.response_sha256, record.signer, record.cert_ids, record.statuses
                ),
            )
        ),
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("record truncated")
        value = self.data[self.at : self.at + n]
        self.at += n
        return value

    def field(self) -> bytes:
        (n,) = _LEN.unpack(self.take(_LEN.size))
        return self.take(n)


def decode(data: bytes) -> RequestRecord:
    reader = _Reader(data)
    version, seq, at_us, nonce = _HEAD.unpack(reader.take(_HEAD.size))
    if version != _VERSION:
        raise ValueError(f"record version {version} is unknown")
    client, server, method, outcome, digest, signer = (reader.field() for _ in range(6))
    (count,) = _LEN.unpack(reader.take(_LEN.size))
    cert_ids = tuple(reader.field() for _ in range(count))
    (n_statuses,) = _LEN.unpack(reader.take(_LEN.size))
    statuses = tuple(reader.field().decode() for _ in range(n_statuses))
    if reader.at != len(data):
        raise ValueError("trailing bytes after the record")
    return RequestRecord(
        seq,
        at_us,
        client.decode(),
        server.decode(),
        method.decode(),
        outcome.decode(),
        bool(nonce),
        cert_ids,
        statuses,
        digest,
        signer,
    )


@dataclass(frozen=True)
class Segment:
    """Consecutive records of one stream with their MACs, as stored in one row (`records`
    in one of the layouts `unpack` reads)."""

    stream: str
    first_seq: int
    last_seq: int
    first_at: dt.datetime
    last_at: dt.datetime
    key_id: str
    records: bytes


class StreamMac:
    """HMAC-SHA256 (RFC 2104) under one key, with the keyed inner and outer hash states
    computed once: half the cost of hmac.digest per record, the same result."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, *parts: bytes) -> bytes:
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


# What the hot path records per request: (at_us, nonce, addresses, method_outcome, answer),
# the three byte fields encoded already (see RequestAudit.record).
Pending = tuple[int, bool, bytes, bytes, bytes]


def chain_records_py(
    key: bytes, head: bytes, seq: int, records: Sequence[Pending]
) -> tuple[bytes, bytes]:
    """Chain `records`, numbered from seq + 1, after the record whose MAC is `head`, into a
    segment in storage format 3 (see `unpack`); returns it and the last MAC. The reference
    for ocspd.audit._chain.chain, which does the same in C."""
    if len(head) != MAC_BYTES:
        raise ValueError("head must be 32 octets")
    mac = StreamMac(key)
    numbers: dict[bytes, int] = {}
    stored = bytearray()
    for at_us, nonce, *fields in records:
        seq += 1
        if not all(type(f) is bytes for f in fields):
            raise TypeError("record fields must be bytes")
        head = mac(head, _HEAD.pack(_VERSION, seq, at_us, nonce), *fields)
        stored += _STORED_HEAD.pack(
            at_us, nonce, *(numbers.setdefault(f, len(numbers)) for f in fields)
        )
        stored += head
    table = b"".join(_RECORD_LEN.pack(len(f)) + f for f in numbers)
    return bytes([_SEGMENT_FORMAT]) + _RECORD_LEN.pack(len(numbers)) + table + stored, head


try:
    from ocspd.audit._chain import chain as chain_records
except ImportError:  # built without a compiler or OpenSSL's headers (see setup.py)
    chain_records = chain_records_py
CHAIN_IN_C = chain_records is not chain_records_py


class Sealer:
    """Chains a stream's records. `pending` is where the hot path puts them: one tuple per
    request, appended as is (a list append is all a request pays). `take` chains the
    oldest of them, at most `max_records` (so none is too large for one timely COPY), in one
    call to chain_records: encoding and HMAC-SHA256 in C, a few hundred nanoseconds a
    record. Not thread-safe; one per stream."""

    def __init__(self, stream: str, key_id: str, skey: bytes, max_records: int = 20_000) -> None:
        self.stream = stream
        self.key_id = key_id
        self._skey = skey
        self._max_records = max_records
        self.seq = 0  # of the last record chained
        self.head = GENESIS  # its MAC
        self.pending: list[Pending] = []

    @property
    def count(self) -> int:
        """Records waiting to be chained."""
        return len(self.pending)

    def add(
        self, at_us: int, nonce: bool, addresses: bytes, method_outcome: bytes, answer: bytes
    ) -> None:
        """The next record: its time, nonce flag, then the encoded fields in three shared
        pieces (client and server address, method and outcome, answer_fields)."""
        self.pending.append((at_us, nonce, addresses, method_outcome, answer))

    def take(self) -> tuple[bytes, int, int, int, int] | None:
        """The oldest waiting records, chained and packed, with their first and last seq and
        first and last time (µs); None when none waits."""
        pending = self.pending
        if not pending:
            return None
        # The list itself stays: RequestAudit holds its bound append.
        taken = pending[: self._max_records]
        del pending[: self._max_records]
        first = self.seq + 1
        packed, self.head = chain_records(self._skey, self.head, self.seq, taken)
        self.seq += len(taken)
        return packed, first, self.seq, taken[0][0], taken[-1][0]


def make_segment(
    stream: str,
    key_id: str,
    packed: bytes,
    first_seq: int,
    last_seq: int,
    first_us: int,
    last_us: int,
) -> Segment:
    """A sealed run of records as stored. Not compressed here: each distinct field value is
    stored once per segment already, and PostgreSQL compresses the column with lz4
    (sql/0005) on top."""
    return Segment(
        stream,
        first_seq,
        last_seq,
        _EPOCH + dt.timedelta(microseconds=first_us),
        _EPOCH + dt.timedelta(microseconds=last_us),
        key_id,
        packed,
    )


def seal(
    stream: str, key_id: str, skey: bytes, previous: bytes, records: Sequence[RequestRecord]
) -> tuple[Segment, bytes]:
    """Chain `records` (consecutive, after the record whose MAC is `previous`) into a
    segment; returns it and the MAC of its last record, for the next segment."""
    sealer = Sealer(stream, key_id, skey, max_records=len(records))
    sealer.seq, sealer.head = records[0].seq - 1, previous
    for r in records:
        sealer.add(r.at_us, r.nonce, encode(r)[_HEAD.size :], b"", b"")
    taken = sealer.take()
    assert taken is not None
    return make_segment(stream, key_id, *taken), sealer.head


def unpack(stored: bytes, first_seq: int) -> Iterator[tuple[bytes, bytes]]:
    """(encoded record, its MAC) for each record of a segment's stored `records`, the
    first being seq `first_seq`. Two storage formats:

    - 3 (what ocspd writes): 0x03; a u32 count of parts, each a u32 length and the octets
      of one distinct field value; then per record at_us (i64), nonce (1 octet), the part
      numbers of its three fields (u32 each: addresses, method and outcome, answer) and its
      MAC. Requests repeat their fields, so a record takes 53 octets, not some 250.
    - 2: per record a u32 length, the encoded record, its MAC (records written before
      format 3, and the format `seal` is tested against).
    """
    if stored[:1] == bytes([_SEGMENT_FORMAT]):
        yield from _unpack_parts(stored, first_seq)
        return
    at = 0
    while at < len(stored):
        if at + _RECORD_LEN.size > len(stored):
            raise ValueError("segment truncated")
        (n,) = _RECORD_LEN.unpack_from(stored, at)
        at += _RECORD_LEN.size
        data, mac = stored[at : at + n], stored[at + n : at + n + MAC_BYTES]
        if len(data) != n or len(mac) != MAC_BYTES:
            raise ValueError("segment truncated")
        at += n + MAC_BYTES
        yield data, mac


def _unpack_parts(stored: bytes, seq: int) -> Iterator[tuple[bytes, bytes]]:
    if len(stored) < 5:
        raise ValueError("segment truncated")
    (count,) = _RECORD_LEN.unpack_from(stored, 1)
    at = 5
    parts = []
    for _ in range(count):
        if at + _RECORD_LEN.size > len(stored):
            raise ValueError("segment truncated")
        (n,) = _RECORD_LEN.unpack_from(stored, at)
        at += _RECORD_LEN.size
        if at + n > len(stored):
            raise ValueError("segment truncated")
        parts.append(stored[at : at + n])
        at += n
    while at < len(stored):
        if at + _STORED_BYTES > len(stored):
            raise ValueError("segment truncated")
        at_us, nonce, *numbers = _STORED_HEAD.unpack_from(stored, at)
        if nonce > 1 or max(numbers) >= len(parts):
            raise ValueError("record names a part that is not there")
        mac = stored[at + _STORED_HEAD.size : at + _STORED_BYTES]
        at += _STORED_BYTES
        head = _HEAD.pack(_VERSION, seq, at_us, nonce)
        yield b"".join((head, *(parts[i] for i in numbers))), mac
        seq += 1


class SegmentVerifier:
    """Walks one stream's segments in order and stops at its first problem."""

    def __init__(self, stream: str, key: MacKey | None, key_id: str) -> None:
        self.stream = stream
        self._skey = stream_key(key, stream) if key is not None else None
        self._key_id = key_id
        self.count = 0
        self.last_seq = 0
        self.head = GENESIS
        self.last_at: dt.datetime | None = None
        self.problem: Problem | None = None

    def feed(self, segment: Segment) -> Problem | None:
        if self.problem is not None:
            return self.problem
        if self._skey is None or segment.key_id != self._key_id:
            return self._fail(
                segment.first_seq,
                f"made with audit key {segment.key_id}, which is not among the keys given "
                "(add a retired key with --key)",
            )
        if segment.first_seq != self.last_seq + 1:
            expected = self.last_seq + 1
            if segment.first_seq < expected:
                return self._fail(segment.first_seq, "segment overlaps the one before")
            return self._fail(None, f"seq {expected}..{segment.first_seq - 1} missing (deleted)")
        seq = segment.first_seq
        try:
            for data, mac in unpack(segment.records, segment.first_seq):
                if mac != hmac.digest(self._skey, self.head + data, "sha256"):
                    return self._fail(seq, "MAC mismatch (record modified or reordered)")
                record = decode(data)
                if record.seq != seq:
                    return self._fail(seq, f"record says seq {record.seq} (record moved)")
                self.head = mac
                self.last_seq = seq
                self.last_at = record.at
                self.count += 1
                seq += 1
        except ValueError as e:
            return self._fail(seq, f"segment unreadable: {e} (modified)")
        if self.last_seq != segment.last_seq:
            return self._fail(
                segment.first_seq,
                f"segment claims seq {segment.first_seq}..{segment.last_seq} but holds "
                f"records up to {self.last_seq} (modified)",
            )
        return None

    def _fail(self, seq: int | None, message: str) -> Problem:
        self.problem = Problem(self.stream, seq, message)
        return self.problem
