"""`ocspd`: the operator's command line (the revocation manager) and, later, the responder.

Each command is one async function taking the parsed arguments and the loaded Config.
Errors the operator can act on are OcspdError subclasses: printed as one line, exit 1.
Usage errors print one line and exit 2. The database is changed in one transaction per
command, so a refused command leaves it as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from tqdm import tqdm

from ocspd import __version__, cli_controls
from ocspd.audit.chain import JsonValue
from ocspd.certfiles import issued_by, parse_openssl_index, read_certificates, read_one_certificate

# OneLineParser is re-exported: crlgen's command line uses it too.
from ocspd.clikit import OneLineParser as OneLineParser
from ocspd.clikit import iso_time, manager, print_record, print_table, reader
from ocspd.clikit import now as _now
from ocspd.config import ENV_OVERRIDES, Config, load_config, parse_listen
from ocspd.errors import InvalidInput, OcspdError
from ocspd.model import (
    REVOCATION_REASONS,
    Reason,
    check_issuer_name,
    format_serial,
    parse_serial_hex,
)
from ocspd.signing.keys import KeyOpener, describe_keyref
from ocspd.store import certificates, issuers
from ocspd.store.certificates import Action, CertRow, StatusChange
from ocspd.store.db import Role, connect, describe_error
from ocspd.store.keycerts import key_use_of
from ocspd.store.migrate import migrate

Command = Callable[[argparse.Namespace, Config], Awaitable[int]]

# Clock skew tolerated on operator-given times before they count as "in the future".
FUTURE_SKEW = dt.timedelta(minutes=5)


def _serial(text: str) -> int:
    try:
        return parse_serial_hex(text)
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _issuer_name(text: str) -> str:
    try:
        return check_issuer_name(text)
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _reason(text: str) -> Reason:
    try:
        reason = Reason.parse(text)
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if reason is Reason.certificateHold:
        raise argparse.ArgumentTypeError("certificateHold is not a revocation: use `ocspd hold`")
    if reason not in REVOCATION_REASONS:
        raise argparse.ArgumentTypeError(f"{reason.name} cannot be given as a revocation reason")
    return reason


def _not_future(value: dt.datetime | None, flag: str, now: dt.datetime) -> None:
    if value is not None and value > now + FUTURE_SKEW:
        raise InvalidInput(f"{flag} {value:%Y-%m-%dT%H:%M:%SZ} is in the future")


# --- db ----------------------------------------------------------------------------------


async def cmd_db_migrate(args: argparse.Namespace, config: Config) -> int:
    conn = await connect(config.require_database_url(), Role.OWNER)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("the status database is up to date")
    return 0


# --- issuer ------------------------------------------------------------------------------


async def cmd_issuer_add(args: argparse.Namespace, config: Config) -> int:
    ca_cert = read_one_certificate(args.ca_cert, "--ca-cert")
    _require_ca(ca_cert, args.ca_cert)
    responder_cert = None
    if args.responder_cert:
        responder_cert = read_one_certificate(args.responder_cert, "--responder-cert")
        _require_delegated_responder(responder_cert, ca_cert, args.responder_cert)
    # CG2.3 / KM3.5: the key must open, match its certificate, and the certificate be valid now.
    with KeyOpener(config.pkcs11) as keys:
        signer = await keys.open(args.responder_key, responder_cert or ca_cert)
        signer.close()
        if args.ca_key:
            if not responder_cert:
                raise InvalidInput(
                    "--ca-key is only for a delegated responder: --responder-key is the CA key"
                )
            signer = await keys.open(args.ca_key, ca_cert)
            signer.close()
    async with manager(config) as m:
        issuer = await m.add_issuer(
            args.name, ca_cert, responder_cert, args.responder_key, args.ca_key
        )
    who = "a delegated responder certificate" if issuer.delegated else "the CA key itself"
    print(
        f"added issuer {issuer.name}: {ca_cert.subject.rfc4514_string()}; responses signed by {who}"
    )
    return 0


def _require_ca(cert: x509.Certificate, path: Path) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidInput(f"{path}: not a CA certificate (basicConstraints cA is not set)")


def _require_delegated_responder(
    cert: x509.Certificate, ca_cert: x509.Certificate, path: Path
) -> None:
    # RFC 6960 4.2.2.2: a delegated responder is issued directly by the CA and carries
    # id-kp-OCSPSigning, or clients reject its responses.
    if not issued_by(cert, ca_cert):
        raise InvalidInput(f"{path}: not issued by the CA certificate given with --ca-cert")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise InvalidInput(
            f"{path}: the responder certificate lacks extended key usage id-kp-OCSPSigning"
        )
    try:
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except x509.ExtensionNotFound:
        print(
            f"warning: {path} has no id-pkix-ocsp-nocheck extension; clients may try to check "
            "the responder certificate's own status",
            file=sys.stderr,
        )


async def cmd_issuer_list(args: argparse.Namespace, config: Config) -> int:
    async with reader(config) as conn:
        found = await issuers.list_issuers(conn)
    if not found:
        print(
            "no issuers; add one with: ocspd issuer add NAME --ca-cert FILE --responder-key KEYREF"
        )
        return 0
    rows = [("NAME", "SUBJECT", "VALID", "SIGNED BY", "KEY", "CERTS")]
    for i in found:
        rows.append(
            (
                i.name,
                i.ca_cert.subject.rfc4514_string(),
                issuers.validity_text(i.ca_cert),
                "responder" if i.delegated else "CA",
                describe_keyref(i.responder_key),
                str(i.certificate_count),
            )
        )
    print_table(rows)
    return 0


# --- cert import -------------------------------------------------------------------------


async def cmd_cert_import(args: argparse.Namespace, config: Config) -> int:
    received_at = _now()
    bars: list[tqdm] = []

    def load(issuer: issuers.Issuer) -> list[CertRow]:
        if args.openssl_index:
            rows = _rows_from_index(args.openssl_index)
        else:
            rows = _rows_from_files(args.files, issuer)
        bars.append(_progress(len(rows), "storing"))
        return rows

    source: dict[str, JsonValue] = (
        {"openssl_index": str(args.openssl_index)}
        if args.openssl_index
        else {"files": [str(f) for f in args.files]}
    )
    try:
        async with manager(config) as m:
            issuer, result = await m.import_certificates(
                args.issuer, load, received_at, source, lambda n: bars[-1].update(n)
            )
    finally:
        for bar in bars:
            bar.close()
    print(
        f"{issuer.name}: {result.added} added, {result.status_changed} status changes applied, "
        f"{result.unchanged} already present"
    )
    if result.kept:
        print(
            f"warning: {result.kept} certificates are revoked or held in the database but not in "
            "the import; kept as they are (revocation is final, RM1.3)",
            file=sys.stderr,
        )
    if result.needs_approval:
        print(
            f"warning: {result.needs_approval} CA or OCSP responder certificates change status in "
            "the import; not applied: their status changes need two officers (RM1.4), use "
            "`ocspd revoke` or `ocspd hold` and `ocspd approve`",
            file=sys.stderr,
        )
    return 0


def _progress(total: int, what: str) -> tqdm:
    # tqdm draws only on a terminal (disable=None), so scripts and logs stay clean.
    return tqdm(total=total, desc=what, unit="cert", unit_scale=True, disable=None, file=sys.stderr)


def _rows_from_files(files: Sequence[Path], issuer: issuers.Issuer) -> list[CertRow]:
    loaded = [(path, cert) for path in files for cert in read_certificates(path)]
    rows = []
    with _progress(len(loaded), "checking") as bar:
        for path, cert in loaded:
            if not issued_by(cert, issuer.ca_cert):
                raise InvalidInput(
                    f"{path}: certificate {format_serial(cert.serial_number)} "
                    f"({cert.subject.rfc4514_string()}) was not issued by {issuer.name}"
                )
            use = key_use_of(cert)
            rows.append(
                CertRow(
                    serial=cert.serial_number,
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    key_use=None if use is None else use.value,
                )
            )
            bar.update()
    return rows


def _rows_from_index(path: Path) -> list[CertRow]:
    return [
        CertRow(
            serial=e.serial,
            not_after=e.not_after,
            status=e.status,
            revoked_at=e.revoked_at,
            reason=e.reason,
            invalidity_date=e.invalidity_date,
        )
        for e in parse_openssl_index(path)
    ]


# --- status changes ----------------------------------------------------------------------


async def _change(args: argparse.Namespace, config: Config, change: StatusChange) -> int:
    async with manager(config) as m:
        result = await m.change(args.issuer, args.serial, change)
    if result.pending:
        assert result.key_use is not None
        print(
            f"request {result.request.id} recorded: to {change.action.value} certificate "
            f"{format_serial(args.serial)} of {args.issuer}, {result.key_use.title}, a second "
            f"officer must approve it (RM1.4): ocspd approve {result.request.id}"
        )
    else:
        print_record(result.record)
    return 0


async def cmd_revoke(args: argparse.Namespace, config: Config) -> int:
    now = _now()
    _not_future(args.revoked_at, "--revoked-at", now)
    _not_future(args.invalidity_date, "--invalidity-date", now)
    change = StatusChange(
        Action.REVOKE,
        received_at=now,
        reason=args.reason,
        revoked_at=args.revoked_at or now,
        invalidity_date=args.invalidity_date,
    )
    return await _change(args, config, change)


async def cmd_hold(args: argparse.Namespace, config: Config) -> int:
    now = _now()
    return await _change(args, config, StatusChange(Action.HOLD, received_at=now, revoked_at=now))


async def cmd_release(args: argparse.Namespace, config: Config) -> int:
    return await _change(args, config, StatusChange(Action.RELEASE, received_at=_now()))


async def cmd_status(args: argparse.Namespace, config: Config) -> int:
    async with reader(config) as conn:
        issuer = await issuers.get_issuer(conn, args.issuer)
        record = await certificates.get_record(conn, issuer, args.serial)
    print_record(record)
    return 0


# --- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Runs outside asyncio.run: the supervisor manages its own loop and processes."""
    from ocspd.serve import serve

    responder = config.responder
    if args.listen:
        responder = dataclasses.replace(responder, listen=parse_listen(args.listen, "--listen"))
    if args.admin_listen:
        responder = dataclasses.replace(
            responder, admin_listen=parse_listen(args.admin_listen, "--admin-listen")
        )
    if args.workers is not None:
        responder = dataclasses.replace(responder, workers=args.workers)
    if not config.database.responder_url:
        config.require_database_url()
    return serve(dataclasses.replace(config, responder=responder))


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {var:<30} [{s}] {k}" for var, (s, k) in ENV_OVERRIDES.items())
    parser = OneLineParser(
        prog="ocspd",
        description="OCSP responder and revocation manager for a certificate authority.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "The status database is a libpq DSN from OCSPD_DATABASE_URL or [database] url in the\n"
            "config file (--config, OCSPD_CONFIG, or /etc/ocspd/ocspd.toml).\n"
            "Environment overrides:\n" + env_help + "\n\n"
            "Commands run as the login of the DSN, in the role they need: officer (revoke, hold,\n"
            "release, approve, refuse, cert import), admin (issuer add, role, purge) or auditor\n"
            "(audit verify, audit search); superusers hold every role. Changes need the audit\n"
            "MAC key (OCSPD_AUDIT_MAC_KEY): each is recorded in a hash-chained audit trail.\n\n"
            "Key references: file:/path/key.pem (mode 0600) or an RFC 7512 URI such as\n"
            "  pkcs11:token=ca;object=ocsp-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/ocspd/pin"
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--version", action="version", version=f"ocspd {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )

    def add(
        sub: argparse._SubParsersAction[OneLineParser],
        name: str,
        func: Command,
        help: str,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    db = commands.add_parser(
        "db", help="status database administration", description="Status database administration."
    )
    db_cmds = db.add_subparsers(
        dest="db_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    add(
        db_cmds,
        "migrate",
        cmd_db_migrate,
        "Create or upgrade the schema and roles (idempotent; run as the database owner).",
    )

    issuer = commands.add_parser(
        "issuer",
        help="CAs whose certificates this service answers for",
        description="Manage issuers.",
    )
    issuer_cmds = issuer.add_subparsers(
        dest="issuer_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    p = add(
        issuer_cmds,
        "add",
        cmd_issuer_add,
        "Register a CA and the key that signs its OCSP responses.",
    )
    p.add_argument(
        "name",
        type=_issuer_name,
        metavar="NAME",
        help="short name used by other commands, e.g. issuing-ca-2026",
    )
    p.add_argument(
        "--ca-cert",
        type=Path,
        required=True,
        metavar="FILE",
        help="the CA certificate (PEM or DER)",
    )
    p.add_argument(
        "--responder-cert",
        type=Path,
        metavar="FILE",
        help="delegated responder certificate (id-kp-OCSPSigning); without it the CA signs its own responses",
    )
    p.add_argument(
        "--responder-key",
        required=True,
        metavar="KEYREF",
        help="the responder's key (the CA key without --responder-cert): file:/path or pkcs11: URI",
    )
    p.add_argument(
        "--ca-key",
        metavar="KEYREF",
        help="the CA key, for crlgen to sign CRLs with (CG1.4); needed with --responder-cert",
    )
    add(issuer_cmds, "list", cmd_issuer_list, "List registered issuers.")

    cert = commands.add_parser(
        "cert", help="certificates in the status database", description="Manage certificates."
    )
    cert_cmds = cert.add_subparsers(
        dest="cert_command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    p = add(
        cert_cmds,
        "import",
        cmd_cert_import,
        "Import issued certificates (PEM, DER or bundles), or an `openssl ca` index.txt with its "
        "revocations. Idempotent: re-running adds only what is new.",
    )
    p.add_argument("--issuer", required=True, metavar="NAME")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "files", nargs="*", type=Path, default=[], metavar="FILE", help="certificate files"
    )
    source.add_argument(
        "--openssl-index", type=Path, metavar="FILE", help="an openssl ca index.txt"
    )

    target = OneLineParser(add_help=False)
    target.add_argument("--issuer", required=True, metavar="NAME")
    target.add_argument(
        "--serial", required=True, type=_serial, metavar="HEX", help="serial number in hex"
    )

    reasons = ", ".join(r.name for r in REVOCATION_REASONS)
    p = commands.add_parser(
        "revoke",
        parents=[target],
        help="revoke a certificate (final)",
        description="Revoke a certificate. Revocation is final (RM1.3); use `ocspd hold` to "
        "suspend. For a CA or OCSP responder certificate this records a request that a second "
        "officer applies with `ocspd approve ID` (RM1.4); likewise hold and release. Needs the "
        "officer role; every request, applied or refused, is in the audit trail (RM3.1).",
    )
    p.set_defaults(func=cmd_revoke)
    p.add_argument(
        "--reason", required=True, type=_reason, metavar="REASON", help=f"one of: {reasons}"
    )
    p.add_argument(
        "--revoked-at",
        type=iso_time,
        metavar="ISO8601",
        help="revocation time (default: now; UTC if no offset)",
    )
    p.add_argument(
        "--invalidity-date",
        type=iso_time,
        metavar="ISO8601",
        help="when the key is known or suspected to have been compromised",
    )
    p = commands.add_parser(
        "hold",
        parents=[target],
        help="suspend a certificate (certificateHold)",
        description="Put a certificate on hold; `ocspd release` lifts it.",
    )
    p.set_defaults(func=cmd_hold)
    p = commands.add_parser(
        "release",
        parents=[target],
        help="release a certificate from hold",
        description="Release a certificate from hold; it is good again.",
    )
    p.set_defaults(func=cmd_release)
    p = commands.add_parser(
        "status",
        parents=[target],
        help="show a certificate's status",
        description="Show a certificate's status as the database holds it.",
    )
    p.set_defaults(func=cmd_status)

    cli_controls.add_commands(commands)

    p = commands.add_parser(
        "serve",
        help="run the OCSP responder",
        description="Serve OCSP (RFC 6960 / RFC 5019) over HTTP from the status database, with "
        "/healthz and /readyz on the same listener and Prometheus /metrics on the admin listener. "
        "Settings not given here come from [responder] in the config file.",
    )
    p.set_defaults(func=cmd_serve, sync=True)
    p.add_argument("--listen", metavar="HOST:PORT", help="public listener (default 0.0.0.0:8080)")
    p.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="metrics listener (default 127.0.0.1:9090)"
    )
    p.add_argument(
        "--workers", type=_workers, metavar="N", help="worker processes (default: one per CPU)"
    )
    return parser


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers between 1 and 256")
    return int(text)


def run_reporting(prog: str, command: Callable[[], int]) -> int:
    """Run a command, turning the errors an operator can act on into one line and exit 1."""
    try:
        return command()
    except OcspdError as e:
        message = str(e)
    except asyncpg.UndefinedTableError:
        message = "the status database has no schema yet; run: ocspd db migrate"
    except asyncpg.PostgresError as e:
        hint = f" ({e.hint})" if getattr(e, "hint", None) else ""
        message = f"the status database refused: {describe_error(e)}{hint}"
    except OSError as e:
        message = str(e)
    except KeyboardInterrupt:
        return 130
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        config = load_config(args.config)
        if getattr(args, "sync", False):
            code: int = args.func(args, config)
            return code
        result: int = asyncio.run(args.func(args, config))
        return result

    return run_reporting("ocspd", command)
