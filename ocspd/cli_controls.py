"""The revocation controls and the audit trail on the command line: approve, refuse, pending,
role, audit and purge. Same conventions as ocspd/cli.py: one transaction per command, an
operator's error is one line and exit 1, a usage error exit 2."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from ocspd.audit.chain import ChainRecord
from ocspd.audit.mac import KeyRing, open_audit_key, write_key_file
from ocspd.audit.requests import RequestRecord, describe_cert_id
from ocspd.clikit import OneLineParser, iso_time, manager, print_record, print_table, reader, utc
from ocspd.config import Config
from ocspd.model import format_serial
from ocspd.store import audit, request_audit, requests, roles
from ocspd.store.audit import SearchFilter, iso
from ocspd.store.db import PERSON_ROLES, Role
from ocspd.store.request_audit import RequestAuditChecker

# RM1.1: a request is applied within 60 minutes of its receipt.
RM11_LIMIT = dt.timedelta(minutes=60)


# --- dual control (RM1.4) -----------------------------------------------------------------


async def cmd_approve(args: argparse.Namespace, config: Config) -> int:
    async with manager(config) as m:
        result = await m.approve(args.id)
    print_record(result.record)
    print(
        f"request {result.request.id} approved by {result.request.approved_by} "
        f"(requested by {result.request.requested_by}) and applied"
    )
    return 0


async def cmd_refuse(args: argparse.Namespace, config: Config) -> int:
    async with manager(config) as m:
        request = await m.refuse(args.id, args.comment)
    print(
        f"request {request.id} to {request.action.value} certificate "
        f"{format_serial(request.serial)} of {request.issuer} refused by {request.refused_by}"
    )
    return 0


async def cmd_pending(args: argparse.Namespace, config: Config) -> int:
    async with reader(config) as conn:
        waiting = await requests.pending(conn)
        oldest = await requests.oldest_pending_seconds(conn)
    if args.json:
        for r in waiting:
            print(
                json.dumps(
                    {
                        "id": r.id,
                        "issuer": r.issuer,
                        "serial": format_serial(r.serial),
                        "action": r.action.value,
                        "reason": None if r.reason is None else r.reason.name,
                        "requested_by": r.requested_by,
                        "received_at": iso(r.received_at),
                    }
                )
            )
        return 0
    if not waiting:
        print("no requests are waiting for approval")
        return 0
    rows = [("ID", "RECEIVED", "BY", "ACTION", "ISSUER", "SERIAL", "REASON")]
    for r in waiting:
        rows.append(
            (
                str(r.id),
                utc(r.received_at),
                r.requested_by,
                r.action.value,
                r.issuer,
                format_serial(r.serial),
                "" if r.reason is None else r.reason.name,
            )
        )
    print_table(rows)
    age = dt.timedelta(seconds=round(oldest))
    late = " (beyond the 60 minutes of RM1.1)" if age > RM11_LIMIT else ""
    print(f"oldest waiting for {age}{late}; a second officer applies one with: ocspd approve ID")
    return 0


# --- roles --------------------------------------------------------------------------------


async def cmd_role_grant(args: argparse.Namespace, config: Config) -> int:
    async with manager(config) as m:
        result = await m.set_role(args.role, args.login, member=True)
    if result == "unchanged":
        print(f"{args.login} is {args.role} already")
    else:
        print(f"granted {args.role} to {args.login}")
    return 0


async def cmd_role_revoke(args: argparse.Namespace, config: Config) -> int:
    async with manager(config) as m:
        result = await m.set_role(args.role, args.login, member=False)
    if result == "revoked":
        print(f"revoked {args.role} from {args.login}")
    elif result == "indirect":
        print(
            f"{args.login} holds {args.role} through another role (such as ocspd_operator); "
            "revoke that membership in PostgreSQL"
        )
    else:
        print(f"{args.login} is not {args.role}")
    return 0


async def cmd_role_list(args: argparse.Namespace, config: Config) -> int:
    async with reader(config, Role.ADMIN, Role.AUDITOR, Role.OFFICER) as conn:
        found = await roles.members(conn)
    rows = [("LOGIN", "ROLES", "NOTE")]
    for member in found:
        note = "superuser: every role" if member.superuser else ""
        if member.indirect:
            note = "through another role: " + ", ".join(member.indirect)
        rows.append((member.login, ", ".join(member.roles), note))
    print_table(rows)
    return 0


# --- audit trail --------------------------------------------------------------------------


async def cmd_audit_keygen(args: argparse.Namespace, config: Config) -> int:
    key_id = write_key_file(args.out)
    print(f"wrote a new audit MAC key to {args.out} (mode 0600), key id {key_id}")
    print(f"use it with: OCSPD_AUDIT_MAC_KEY=file:{args.out.resolve()}")
    return 0


async def cmd_audit_verify(args: argparse.Namespace, config: Config) -> int:
    refs = [config.require_audit_key(), *args.key]
    keys = []
    try:
        for ref in refs:
            keys.append(await open_audit_key(ref, config.pkcs11))
    except BaseException:
        for key in keys:
            key.close()
        raise
    with KeyRing(keys) as ring:
        async with reader(config, Role.AUDITOR) as conn:
            report = await audit.verify(
                conn, ring, batch=args.batch, checkers=(RequestAuditChecker(),)
            )
    for s in report.streams:
        if args.verbose:
            print(
                f"stream {s.stream} ({s.table}): {s.records} records, head seq {s.last_seq} "
                f"mac {s.head.hex()[:16]} at {utc(s.last_at)}"
            )
    if report.problems:
        for problem in report.problems:
            print(f"ocspd: audit trail broken: {problem}", file=sys.stderr)
        return 1
    heads = ", ".join(
        f"{s.stream} seq {s.last_seq} mac {s.head.hex()[:16]}" for s in report.streams
    )
    print(
        f"audit trail intact: {report.records} records in {len(report.streams)} streams"
        + (f"; heads: {heads}" if heads else "")
    )
    return 0


def _search_json(record: ChainRecord, mac: bytes) -> str:
    return json.dumps(
        {
            "stream": record.stream,
            "seq": record.seq,
            "at": iso(record.at),
            "type": record.type,
            "actor": record.actor,
            "outcome": record.outcome,
            "detail": record.detail,
            "key_id": record.key_id,
            "mac": mac.hex(),
        },
        sort_keys=True,
    )


def _detail_text(record: ChainRecord) -> str:
    return " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}"
        for k, v in sorted(record.detail.items())
        if v is not None
    )


OCSP_REQUEST = "ocsp-request"


def _request_fields(stream: str, record: RequestRecord) -> dict[str, object]:
    return {
        "stream": stream,
        "seq": record.seq,
        "at": iso(record.at),
        "type": OCSP_REQUEST,
        "client": record.client,
        "server": record.server,
        "method": record.method,
        "outcome": record.outcome,
        "nonce": record.nonce,
        "cert_ids": [describe_cert_id(c) for c in record.cert_ids],
        "statuses": list(record.statuses),
        "response_sha256": record.response_sha256.hex(),
        "signer": record.signer.hex(),
    }


def _request_json(stream: str, record: RequestRecord) -> str:
    return json.dumps(_request_fields(stream, record), sort_keys=True)


def _request_text(stream: str, record: RequestRecord) -> str:
    if record.outcome == "stream-open":
        return f"{utc(record.at)} {stream}#{record.seq} stream-open"
    asked = ", ".join(
        f"{describe_cert_id(c)}={s}"
        for c, s in zip(
            record.cert_ids, record.statuses or ("-",) * len(record.cert_ids), strict=True
        )
    )
    return (
        f"{utc(record.at)} {stream}#{record.seq} {OCSP_REQUEST} {record.outcome} "
        f"from {record.client} {record.method}{' nonce' if record.nonce else ''}: "
        f"{asked or 'no CertID'} response {record.response_sha256.hex()[:16]}"
    )


async def cmd_audit_search(args: argparse.Namespace, config: Config) -> int:
    where = SearchFilter(
        since=args.since,
        until=args.until,
        types=args.type or (),
        actors=args.actor or (),
        streams=args.stream or (),
    )
    found = 0
    types = set(args.type or ())
    async with reader(config, Role.AUDITOR) as conn, conn.transaction(readonly=True):
        if not types or types - {OCSP_REQUEST}:
            async for record, mac in audit.search(conn, where, args.limit):
                found += 1
                if args.json:
                    print(_search_json(record, mac))
                else:
                    print(
                        f"{utc(record.at)} {record.stream}#{record.seq} {record.type} "
                        f"{record.outcome} by {record.actor}: {_detail_text(record)}"
                    )
        # RS3.1 records of OCSP requests (their actor is the client's address), after the
        # operator events, each in time order.
        if (not types or OCSP_REQUEST in types) and not args.stream:
            clients = tuple(args.actor or ())
            async for stream, item in request_audit.search(conn, args.since, args.until, clients):
                if args.limit is not None and found >= args.limit:
                    break
                found += 1
                print(_request_json(stream, item) if args.json else _request_text(stream, item))
    if not found and not args.json:
        print("no audit records match")
    return 0


# --- purge (pkio70) -----------------------------------------------------------------------


async def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    async with manager(config) as m:
        counts = await m.purge(args.before, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {counts.certificates} certificates expired and revoked before "
        f"{utc(args.before)}, {counts.responses} stored responses and {counts.requests} "
        f"revocation requests"
    )
    if counts.kept_pending:
        print(f"kept {counts.kept_pending} certificates with a request waiting for approval")
    return 0


# --- parser -------------------------------------------------------------------------------


def _request_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a request id (a positive number)")
    return int(text)


def _role(text: str) -> str:
    if text not in PERSON_ROLES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: {', '.join(PERSON_ROLES)}")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def add_commands(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    p = commands.add_parser(
        "approve",
        help="apply a pending request as the second officer (RM1.4)",
        description="Apply a pending request to revoke, hold or release a CA or OCSP responder "
        "certificate. Needs the officer role and a login other than the one that made the "
        "request (RM1.4); `ocspd pending` lists them.",
    )
    p.set_defaults(func=cmd_approve)
    p.add_argument("id", type=_request_id, metavar="ID", help="the request id")

    p = commands.add_parser(
        "refuse",
        help="reject a pending request",
        description="Reject a pending request; it stays on record as refused. Needs the officer "
        "role; the officer who made it may withdraw it this way.",
    )
    p.set_defaults(func=cmd_refuse)
    p.add_argument("id", type=_request_id, metavar="ID", help="the request id")
    p.add_argument("--comment", metavar="TEXT", help="why, for the audit trail")

    p = commands.add_parser(
        "pending",
        help="list requests waiting for a second officer",
        description="List the requests waiting for approval, oldest first, and how long the "
        "oldest has waited (RM1.1: 60 minutes from receipt to the status database).",
    )
    p.set_defaults(func=cmd_pending)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    role = commands.add_parser(
        "role",
        help="who may do what: officer, auditor, admin",
        description="People's roles (M1.1): officer (status changes, imports), auditor (reads "
        "the audit trail, changes nothing), admin (issuers, roles, purge). Each is granted to "
        "the PostgreSQL login a person connects as; an auditor may not also be an officer or "
        "admin (M1.4). Grants and revocations are in the audit trail.",
    )
    role_cmds = role.add_subparsers(
        dest="role_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    for name, func, what in (
        ("grant", cmd_role_grant, "Grant a role to a login (administrators only)."),
        ("revoke", cmd_role_revoke, "Revoke a role from a login (administrators only)."),
    ):
        p = role_cmds.add_parser(name, help=what, description=what)
        p.set_defaults(func=func)
        p.add_argument("role", type=_role, metavar="ROLE", help="officer, auditor or admin")
        p.add_argument("login", metavar="LOGIN", help="a PostgreSQL login role")
    p = role_cmds.add_parser(
        "list", help="List logins and their roles.", description="List logins and their roles."
    )
    p.set_defaults(func=cmd_role_list)

    audit_cmd = commands.add_parser(
        "audit",
        help="the tamper-evident audit trail",
        description="The audit trail (AA7.1): every operator action is a record chained to the "
        "previous one by an HMAC (key: OCSPD_AUDIT_MAC_KEY or [audit] mac_key).",
    )
    audit_cmds = audit_cmd.add_subparsers(
        dest="audit_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    p = audit_cmds.add_parser(
        "keygen",
        help="Create a new audit MAC key file.",
        description="Write a fresh 32-byte HMAC key as hex to FILE (mode 0600; never overwrites). "
        "For an HSM instead: pkcs11-tool --login --keygen --key-type GENERIC:32 --label "
        "audit-mac --usage-sign --sensitive, and a pkcs11: URI as the key.",
    )
    p.set_defaults(func=cmd_audit_keygen)
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p = audit_cmds.add_parser(
        "verify",
        help="Check every record of every stream.",
        description="Check the whole audit trail (AA7.2): each stream's records run from seq 1 "
        "without gaps and each MAC chains to the previous one; each revocation request has its "
        "records. Exit 0 with a summary when intact; exit 1 naming the first bad record of each "
        "broken stream. Keep the printed heads elsewhere: removing the newest records is only "
        "visible against them. Needs the auditor role.",
    )
    p.set_defaults(func=cmd_audit_verify)
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEYREF",
        help="a retired MAC key that older records were made with (repeatable)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="print every stream's head")
    p.add_argument("--batch", type=_positive, default=1000, help=argparse.SUPPRESS)
    p = audit_cmds.add_parser(
        "search",
        help="Read records by time, type and actor.",
        description="Print audit records in time order (AA4.1). Filters combine; repeat --type, "
        "--actor or --stream for several. This reads, it does not check: run `ocspd audit "
        "verify` for that. Needs the auditor role.",
    )
    p.set_defaults(func=cmd_audit_search)
    p.add_argument("--since", type=iso_time, metavar="ISO8601", help="at or after this time")
    p.add_argument("--until", type=iso_time, metavar="ISO8601", help="before this time")
    p.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="revoke, hold, release, approve, refuse, import, issuer-add, role-grant, "
        "role-revoke, purge, stream-open, or ocsp-request (the responder's record of every "
        "OCSP request, RS3.1); repeat for several; default all",
    )
    p.add_argument(
        "--actor",
        action="append",
        metavar="LOGIN",
        help="the login that acted; for ocsp-request records, the client's IP address",
    )
    p.add_argument("--stream", action="append", metavar="NAME", help="e.g. operator")
    p.add_argument("--limit", type=_positive, metavar="N")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = commands.add_parser(
        "purge",
        help="remove status rows past retention (pkio70)",
        description="Remove the status rows of certificates that expired, and were revoked or "
        "held if at all, before TIME, with their stored responses and revocation requests. "
        "pkio70 keeps them at least 6 months: a TIME later than 6 months ago is refused. "
        "Recorded in the audit trail; needs the admin role.",
    )
    p.set_defaults(func=cmd_purge)
    p.add_argument("--before", type=iso_time, required=True, metavar="ISO8601")
    p.add_argument("--dry-run", action="store_true", help="count, change nothing")
