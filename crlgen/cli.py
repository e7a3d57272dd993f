"""`crlgen`: sign and publish one full CRL per issuer (RFC 5280) from the status database."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from crlgen import store
from crlgen.metrics import CrlMetrics
from crlgen.pipeline import sign_issuer
from crlgen.scheduler import Scheduler
from crlgen.verify import CrlInfo, crl_info
from ocspd import __version__
from ocspd.cli import OneLineParser, run_reporting
from ocspd.config import Config, load_config
from ocspd.errors import OcspdError, SigningKeyError
from ocspd.logs import setup_logging
from ocspd.model import format_serial
from ocspd.signing.keys import KeyOpener
from ocspd.store import issuers as issuer_store
from ocspd.store.db import Role, connect


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def cmd_sign(args: argparse.Namespace, config: Config) -> int:
    out = Path(args.out or config.crl.directory)
    conn = await connect(config.require_database_url(), Role.PUBLISHER)
    try:
        issuer = await issuer_store.get_issuer(conn, args.issuer)
        if issuer.crl_key is None:
            raise SigningKeyError(
                f"issuer {issuer.name} has no CA key for CRLs; register it with `ocspd issuer add --ca-key`"
            )
        with KeyOpener(config.pkcs11) as keys:
            signer = await keys.open(issuer.crl_key, issuer.ca_cert)
            # A progress bar for large lists; tqdm draws only on a terminal.
            with tqdm(
                desc="entries", unit="entry", unit_scale=True, disable=None, file=sys.stderr
            ) as bar:
                signed = await sign_issuer(conn, issuer, signer, config.crl, _now, out, bar.update)
    finally:
        await conn.close()
    _print_info(issuer.name, signed.info)
    print(f"published {signed.path} in {signed.seconds:.2f} s")
    return 0


async def cmd_show(args: argparse.Namespace, config: Config) -> int:
    conn = await connect(config.require_database_url(), Role.PUBLISHER)
    try:
        issuer = await issuer_store.get_issuer(conn, args.issuer)
        der = await store.latest_der(conn, issuer.id)
    finally:
        await conn.close()
    if der is None:
        raise OcspdError(
            f"issuer {issuer.name} has no CRL yet; sign one with: crlgen sign --issuer {issuer.name}"
        )
    _print_info(issuer.name, crl_info(der))
    return 0


def _print_info(name: str, info: CrlInfo) -> None:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    print(
        f"issuer={name} number={info.number} (0x{format_serial(info.number)}) "
        f"this_update={info.this_update:{fmt}} next_update={info.next_update:{fmt}} "
        f"entries={info.entries} sha256={info.sha256.hex()}"
    )


async def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    log = setup_logging(config.responder.log_level)
    registry = CollectorRegistry()
    metrics = CrlMetrics(registry)

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = config.crl.metrics_listen
    await web.TCPSite(runner, host, port).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with KeyOpener(config.pkcs11) as keys:
        scheduler = Scheduler(config, keys, metrics, log, _now)
        log.info(
            "crlgen running", extra={"directory": config.crl.directory, "metrics": f"{host}:{port}"}
        )
        task = asyncio.create_task(scheduler.run())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        scheduler.close()
    await runner.cleanup()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="crlgen",
        description="Sign and publish one full CRL per issuer from the ocspd status database "
        "(RFC 5280; pkio65: at least every 7 days, nextUpdate at most 10 days out).",
        epilog="The database and settings come from the same config file and environment as "
        "ocspd ([database], [pkcs11], [crl]; OCSPD_DATABASE_URL, OCSPD_CRL_DIR).",
    )
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--version", action="version", version=f"crlgen {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineParser, required=True
    )
    p = commands.add_parser(
        "run",
        help="keep every issuer's CRL current (the daemon)",
        description="Sign each issuer's CRL on the configured cadence and soon after every "
        "revocation, hold or release; with several instances one signs at a time.",
    )
    p.set_defaults(func=cmd_run)
    p = commands.add_parser(
        "sign", help="sign one issuer's CRL now", description="Sign and publish one CRL now."
    )
    p.add_argument("--issuer", required=True, metavar="NAME")
    p.add_argument(
        "--out", metavar="DIR", help="publish to DIR/NAME.crl (default: [crl] directory)"
    )
    p.set_defaults(func=cmd_sign)
    p = commands.add_parser(
        "show",
        help="describe an issuer's latest CRL",
        description="Print the latest CRL's number, thisUpdate, nextUpdate, entry count and SHA-256.",
    )
    p.add_argument("--issuer", required=True, metavar="NAME")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        code: int = asyncio.run(args.func(args, load_config(args.config)))
        return code

    return run_reporting("crlgen", command)
