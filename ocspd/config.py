"""Configuration: a TOML file plus environment overrides, validated once at start-up.

Order of precedence (highest first): environment variables, the file named by --config or
OCSPD_CONFIG, then defaults. Every field is documented in deploy/ocspd.example.toml.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocspd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/ocspd/ocspd.toml")

# Environment variable -> (section, key). Kept in one table so --help and the docs can list it.
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "OCSPD_DATABASE_URL": ("database", "url"),
    "OCSPD_RESPONDER_DATABASE_URL": ("database", "responder_url"),
    "OCSPD_AUDIT_DATABASE_URL": ("database", "audit_url"),
    "OCSPD_PKCS11_MODULE": ("pkcs11", "module"),
    "OCSPD_PKCS11_PIN_SOURCE": ("pkcs11", "pin_source"),
    "OCSPD_LISTEN": ("responder", "listen"),
    "OCSPD_ADMIN_LISTEN": ("responder", "admin_listen"),
    "OCSPD_WORKERS": ("responder", "workers"),
    "OCSPD_LOG_LEVEL": ("responder", "log_level"),
    "OCSPD_CRL_DIR": ("crl", "directory"),
    "OCSPD_AUDIT_MAC_KEY": ("audit", "mac_key"),
    "OCSPD_AUDIT_REQUESTS": ("audit", "requests"),
    "OCSPD_AUDIT_ON_FAILURE": ("audit", "on_failure"),
    "OCSPD_AUDIT_SPOOL_DIR": ("audit", "spool_dir"),
}

_KNOWN: Mapping[str, frozenset[str]] = {
    "database": frozenset({"url", "responder_url", "audit_url"}),
    "pkcs11": frozenset({"module", "pin_source"}),
    "responder": frozenset(
        {
            "listen",
            "admin_listen",
            "workers",
            "path",
            "max_request_bytes",
            "response_lifetime",
            "refresh_after",
            "max_cache_age",
            "unknown_serials",
            "nonce",
            "max_signing",
            "max_signing_waiters",
            "cache_entries",
            "feed_interval",
            "max_status_age",
            "drain_seconds",
            "request_timeout",
            "keepalive_timeout",
            "log_level",
        }
    ),
    "crl": frozenset(
        {
            "directory",
            "interval",
            "next_update",
            "revocation_delay",
            "keep_expired",
            "poll_interval",
            "metrics_listen",
        }
    ),
    "audit": frozenset(
        {"mac_key", "requests", "on_failure", "spool_dir", "max_pending", "flush_interval", "hold"}
    ),
}

# pkio71: an OCSP response lives at most 10 calendar days, and the service is updated at
# least every 4 days, so no served thisUpdate is older than that.
MAX_RESPONSE_LIFETIME = dt.timedelta(days=10)
MAX_REFRESH_AFTER = dt.timedelta(days=4)
# pkio65 / RM2.2a: a CRL at least every 7 days, nextUpdate at most 10 days after thisUpdate.
MAX_CRL_INTERVAL = dt.timedelta(days=7)
MAX_CRL_LIFETIME = dt.timedelta(days=10)
# eIDAS art. 24.3: a revocation published within 24 hours.
MAX_REVOCATION_DELAY = dt.timedelta(hours=24)
# HTTP deadlines of the listener. The server checks them once a second, so less than a
# second means nothing; above the maxima a slow or idle client holds a socket for no purpose.
HTTP_TIMEOUT_MIN = dt.timedelta(seconds=1)
MAX_REQUEST_TIMEOUT = dt.timedelta(minutes=5)
MAX_KEEPALIVE_TIMEOUT = dt.timedelta(hours=1)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int | float, field_name: str) -> dt.timedelta:
    """'500ms', '30s', '15m', '36h', '2d' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{field_name}: {value!r} is not a duration such as 30s, 15m, 36h or 2d")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def parse_listen(value: str, field_name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{field_name}: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class UnknownSerials(enum.Enum):
    """What a serial gets that a served issuer never issued; never `good`."""

    UNKNOWN = "unknown"
    # RFC 6960 2.2 extended revoke: revoked, 1970-01-01, certificateHold.
    REVOKED = "revoked"


class AuditFailure(enum.Enum):
    """What the responder does when audit storage is down or cannot keep up (AA1.1 e)."""

    TRY_LATER = "tryLater"  # answer tryLater once the backlog is full: nothing unrecorded
    SPOOL = "spool"  # keep answering; records go to local disk and are shipped later


class NoncePolicy(enum.Enum):
    ECHO = "echo"  # sign a fresh response that echoes the nonce (RFC 9654)
    IGNORE = "ignore"  # serve the cached response without the nonce (RFC 5019)


@dataclass(frozen=True)
class DatabaseConfig:
    # libpq DSN of the status database. The operator CLI uses it as it is; the responder
    # connects with it and then switches to the read-only ocspd_responder role (R11).
    url: str = ""
    # Optional separate login for the responder (a production setup gives it its own
    # credentials); when empty the responder uses `url` plus SET ROLE.
    responder_url: str = ""
    # Where the responder writes its records of OCSP requests (RS3.1). Empty: its own
    # database (responder_url, else url). Responders that read from a streaming replica set
    # it to the primary: a standby takes no writes.
    audit_url: str = ""


@dataclass(frozen=True)
class Pkcs11Config:
    # Default PKCS#11 module for pkcs11: key URIs that carry no module-path attribute.
    module: str = ""
    # Default PIN source (RFC 7512 pin-source: file:/path, or env:NAME) for URIs without one.
    pin_source: str = ""


@dataclass(frozen=True)
class ResponderConfig:
    # Where relying parties reach the responder (and /healthz, /readyz for load balancers).
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    # Prometheus /metrics; keep it off public interfaces (N2).
    admin_listen: tuple[str, int] = ("127.0.0.1", 9090)
    # Worker processes sharing the port; 0 means one per CPU.
    workers: int = 0
    # URL prefix of OCSP requests: POST to it, GET with the base64 request appended.
    path: str = "/"
    # Requests larger than this are refused before parsing.
    max_request_bytes: int = 10_000
    # nextUpdate - thisUpdate. Longer lets caches and CDNs absorb more load; shorter makes a
    # revocation reach clients that cache sooner. At most 10 days (pkio71).
    response_lifetime: dt.timedelta = dt.timedelta(days=2)
    # A cached or stored response older than this is signed again. At most 4 days (pkio71).
    refresh_after: dt.timedelta = dt.timedelta(hours=12)
    # Cap on Cache-Control max-age, so HTTP caches ask again well before nextUpdate.
    max_cache_age: dt.timedelta = dt.timedelta(hours=1)
    unknown_serials: UnknownSerials = UnknownSerials.UNKNOWN
    nonce: NoncePolicy = NoncePolicy.ECHO
    # Live signatures in flight per worker, and how many more may wait before tryLater.
    max_signing: int = 32
    max_signing_waiters: int = 256
    # Signed responses kept in memory per worker.
    cache_entries: int = 200_000
    # How often each worker polls the change feed; bounds how long a revocation takes to
    # reach clients (1 s budget).
    feed_interval: dt.timedelta = dt.timedelta(milliseconds=200)
    # How old the change feed's view may be when a cached answer or a remembered status is
    # served; past it, requests wait for the feed to catch up. A revocation committed at T
    # is answered as revoked from T + max_status_age on: half the 1 s budget leaves the
    # other half to a poll that runs late on a busy database. Shorter than feed_interval,
    # requests ask for most polls themselves.
    max_status_age: dt.timedelta = dt.timedelta(milliseconds=500)
    # After SIGTERM: /readyz says 503 for this long before the listener closes, so load
    # balancers stop sending first.
    drain_seconds: float = 2.0
    # From the first byte of a request to its last: a client that sends its request more
    # slowly (headers or body dribbled) gets 408 and is closed, so it holds a socket, never a
    # worker. 1 s to 5 min.
    request_timeout: dt.timedelta = dt.timedelta(seconds=10)
    # A keep-alive connection with nothing in flight (or a new one that sends nothing) is
    # closed after this. Longer saves clients reconnecting; shorter frees sockets sooner.
    # 1 s to 1 h.
    keepalive_timeout: dt.timedelta = dt.timedelta(seconds=75)
    log_level: str = "info"


@dataclass(frozen=True)
class CrlConfig:
    # Where crlgen publishes DIR/NAME.crl and where ocspd serves /crl/NAME.crl from.
    directory: str = "/var/lib/ocspd/crl"
    # A full CRL per issuer at least this often. At most 7 days (pkio65, RM2.2a).
    interval: dt.timedelta = dt.timedelta(hours=24)
    # nextUpdate - thisUpdate. At most 10 days (pkio65); longer than `interval`, so a CRL
    # never expires before its successor is due.
    next_update: dt.timedelta = dt.timedelta(days=10)
    # A revocation, hold or release is on a new CRL within this delay. At most 24 hours
    # (eIDAS art. 24.3).
    revocation_delay: dt.timedelta = dt.timedelta(minutes=5)
    # Entries of certificates expired longer than this are left off; None keeps them all.
    keep_expired: dt.timedelta | None = None
    # How often `crlgen run` looks for work and for the leader lock. Takeover after the
    # leader dies happens within about this long.
    poll_interval: dt.timedelta = dt.timedelta(seconds=5)
    metrics_listen: tuple[str, int] = ("127.0.0.1", 9091)


@dataclass(frozen=True)
class AuditConfig:
    # The key that MACs the audit trail's hash chain (AA7.1): file:/path (a 0600 file of at
    # least 32 random bytes as hex, `ocspd audit keygen`) or a pkcs11: URI naming a generic
    # secret key in an HSM (KM1.1). Commands that change the status database refuse to run
    # without it: a CA's status changes are always on record.
    mac_key: str = ""
    # RS3.1, pkio80: one record per OCSP request served. Turning it off is for benchmarks
    # and development; a CA in production keeps it on.
    requests: bool = True
    # When audit storage (PostgreSQL) is down or behind: tryLater (the default) answers
    # tryLater once max_pending records wait; spool writes them to spool_dir (fsync'd) and
    # ships them when the database is back. Either way no record is dropped unannounced.
    on_failure: AuditFailure = AuditFailure.TRY_LATER
    spool_dir: str = "/var/lib/ocspd/audit-spool"
    # Records held in memory, per worker, before tryLater (or the spool) takes over: about
    # 53 bytes each once sealed; 200 000 cover several seconds of a slow commit at full
    # load. Once a large backlog is stored, its memory goes back to the system.
    max_pending: int = 200_000
    # How often each worker seals its records into a segment (one row each); a backlog is
    # then stored COPY after COPY, not one per flush.
    flush_interval: dt.timedelta = dt.timedelta(milliseconds=200)
    # tryLater policy, backlog full: how long a request waits for the writer to make room
    # before it gets tryLater (0: at once). Waiting slows clients to the rate storage takes;
    # refusing at once let cheap tryLater answers, each on record too (RS3.1), arrive faster
    # than records were stored, and the backlog never drained under load.
    hold: dt.timedelta = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    pkcs11: Pkcs11Config = field(default_factory=Pkcs11Config)
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    crl: CrlConfig = field(default_factory=CrlConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    source: str = "defaults"

    def require_database_url(self) -> str:
        if not self.database.url:
            raise ConfigError(
                "no database configured: set OCSPD_DATABASE_URL to a libpq DSN "
                "(e.g. postgresql://ocspd@db.example/ocspd) or [database] url in the config file"
            )
        return self.database.url

    def require_audit_key(self) -> str:
        if not self.audit.mac_key:
            raise ConfigError(
                "no audit MAC key configured; the status database is changed only with a "
                "tamper-evident record of it (AA7.1): set OCSPD_AUDIT_MAC_KEY or [audit] mac_key to file:/etc/ocspd/audit.key "
                "(made by `ocspd audit keygen --out FILE`) or a pkcs11: URI"
            )
        return self.audit.mac_key


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the file (if any), apply environment overrides, validate, return a frozen Config."""
    env = os.environ if environ is None else environ
    explicit = path or env.get("OCSPD_CONFIG")
    data: dict[str, dict[str, Any]] = {}
    source = "defaults"
    if explicit:
        file = Path(explicit)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        data = _read_toml(file)
        source = str(file)
    elif DEFAULT_CONFIG_PATH.is_file():
        data = _read_toml(DEFAULT_CONFIG_PATH)
        source = str(DEFAULT_CONFIG_PATH)

    for section, keys in data.items():
        if section not in _KNOWN:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(keys, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in keys:
            if key not in _KNOWN[section]:
                raise ConfigError(f"{source}: unknown setting {section}.{key}")

    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            data.setdefault(section, {})[key] = env[var]

    return Config(
        database=DatabaseConfig(**_strings(data.get("database", {}), "database", source)),
        pkcs11=Pkcs11Config(**_strings(data.get("pkcs11", {}), "pkcs11", source)),
        responder=_responder(data.get("responder", {}), source),
        crl=_crl(data.get("crl", {}), source),
        audit=_audit(data.get("audit", {}), source),
        source=source,
    )


def _audit(values: dict[str, Any], source: str) -> AuditConfig:
    d = AuditConfig()
    mac_key = values.get("mac_key", "")
    if not isinstance(mac_key, str) or (mac_key and not mac_key.startswith(("file:", "pkcs11:"))):
        raise ConfigError(
            f"{source}: audit.mac_key must be file:/path or a pkcs11: URI, got {str(mac_key)[:40]!r}"
        )
    requests = values.get("requests", d.requests)
    if isinstance(requests, str) and requests.lower() in ("on", "true", "off", "false"):
        requests = requests.lower() in ("on", "true")
    if not isinstance(requests, bool):
        raise ConfigError(f"{source}: audit.requests must be on or off, got {requests!r}")
    interval = _duration(values, "audit", "flush_interval", d.flush_interval, source)
    if not dt.timedelta(milliseconds=10) <= interval <= dt.timedelta(seconds=10):
        raise ConfigError(
            f"{source}: audit.flush_interval must be between 10 ms and 10 s, got {interval}"
        )
    spool_dir = values.get("spool_dir", d.spool_dir)
    if not isinstance(spool_dir, str) or not spool_dir:
        raise ConfigError(f"{source}: audit.spool_dir must be a directory path")
    hold = _duration(values, "audit", "hold", d.hold, source)
    if not dt.timedelta(0) <= hold <= dt.timedelta(seconds=10):
        raise ConfigError(f"{source}: audit.hold must be between 0 and 10 s, got {hold}")
    return AuditConfig(
        mac_key=mac_key,
        requests=requests,
        on_failure=_choice(
            values, "on_failure", AuditFailure, d.on_failure, source, section="audit"
        ),
        spool_dir=spool_dir,
        max_pending=_int(values, "max_pending", d.max_pending, 100, source, section="audit"),
        flush_interval=interval,
        hold=hold,
    )


def _crl(values: dict[str, Any], source: str) -> CrlConfig:
    d = CrlConfig()

    def duration(key: str, default: dt.timedelta) -> dt.timedelta:
        return _duration(values, "crl", key, default, source)

    interval = duration("interval", d.interval)
    lifetime = duration("next_update", d.next_update)
    delay = duration("revocation_delay", d.revocation_delay)
    if interval > MAX_CRL_INTERVAL:
        raise ConfigError(
            f"{source}: crl.interval is {interval}; at most 7 days are allowed (pkio65, RM2.2a)"
        )
    if lifetime > MAX_CRL_LIFETIME:
        raise ConfigError(
            f"{source}: crl.next_update is {lifetime}; at most 10 days are allowed (pkio65)"
        )
    if not dt.timedelta(0) < interval < lifetime:
        raise ConfigError(
            f"{source}: crl.interval ({interval}) must be positive and shorter than "
            f"crl.next_update ({lifetime}), or a CRL expires before the next one is signed"
        )
    if delay > MAX_REVOCATION_DELAY:
        raise ConfigError(
            f"{source}: crl.revocation_delay is {delay}; at most 24 hours are allowed (eIDAS art. 24.3)"
        )
    poll = duration("poll_interval", d.poll_interval)
    if not dt.timedelta(0) < poll < delay:
        raise ConfigError(
            f"{source}: crl.poll_interval ({poll}) must be positive and shorter than "
            f"crl.revocation_delay ({delay}), or a revocation can miss its deadline"
        )
    keep = values.get("keep_expired", "")
    return CrlConfig(
        directory=str(values.get("directory", d.directory)),
        interval=interval,
        next_update=lifetime,
        revocation_delay=delay,
        keep_expired=parse_duration(keep, f"{source}: crl.keep_expired")
        if keep not in ("", "forever")
        else None,
        poll_interval=poll,
        metrics_listen=parse_listen(str(values["metrics_listen"]), f"{source}: crl.metrics_listen")
        if "metrics_listen" in values
        else d.metrics_listen,
    )


def _duration(
    values: dict[str, Any], section: str, key: str, default: dt.timedelta, source: str
) -> dt.timedelta:
    if key not in values:
        return default
    return parse_duration(values[key], f"{source}: {section}.{key}")


def _int(
    values: dict[str, Any],
    key: str,
    default: int,
    low: int,
    source: str,
    section: str = "responder",
) -> int:
    value = values.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {section}.{key} must be an integer, got {value!r}") from None
    if number < low:
        raise ConfigError(f"{source}: {section}.{key} must be at least {low}, got {number}")
    return number


def _choice(
    values: dict[str, Any],
    key: str,
    kind: type[enum.Enum],
    default: enum.Enum,
    source: str,
    section: str = "responder",
) -> Any:
    value = values.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise ConfigError(
            f"{source}: {section}.{key} must be one of {allowed}, got {value!r}"
        ) from None


def _responder(values: dict[str, Any], source: str) -> ResponderConfig:
    d = ResponderConfig()

    def duration(key: str, default: dt.timedelta) -> dt.timedelta:
        return _duration(values, "responder", key, default, source)

    lifetime = duration("response_lifetime", d.response_lifetime)
    refresh = duration("refresh_after", d.refresh_after)
    if lifetime > MAX_RESPONSE_LIFETIME:
        raise ConfigError(
            f"{source}: responder.response_lifetime is {lifetime}; at most 10 days are allowed (pkio71)"
        )
    if refresh > MAX_REFRESH_AFTER:
        raise ConfigError(
            f"{source}: responder.refresh_after is {refresh}; at most 4 days are allowed (pkio71)"
        )
    if not dt.timedelta(0) < refresh < lifetime:
        raise ConfigError(
            f"{source}: responder.refresh_after ({refresh}) must be positive and shorter than "
            f"responder.response_lifetime ({lifetime})"
        )
    path = str(values.get("path", d.path))
    if not path.startswith("/"):
        raise ConfigError(f"{source}: responder.path must start with '/', got {path!r}")
    request_timeout = duration("request_timeout", d.request_timeout)
    if not HTTP_TIMEOUT_MIN <= request_timeout <= MAX_REQUEST_TIMEOUT:
        raise ConfigError(
            f"{source}: responder.request_timeout must be between 1 s and 5 min, got {request_timeout.total_seconds():g} s"
        )
    keepalive_timeout = duration("keepalive_timeout", d.keepalive_timeout)
    if not HTTP_TIMEOUT_MIN <= keepalive_timeout <= MAX_KEEPALIVE_TIMEOUT:
        raise ConfigError(
            f"{source}: responder.keepalive_timeout must be between 1 s and 1 h, got {keepalive_timeout.total_seconds():g} s"
        )
    feed_interval = duration("feed_interval", d.feed_interval)
    max_status_age = duration("max_status_age", d.max_status_age)
    if not dt.timedelta(0) < max_status_age <= dt.timedelta(seconds=10):
        raise ConfigError(
            f"{source}: responder.max_status_age must be more than 0 and at most 10 s, got "
            f"{max_status_age.total_seconds():g} s"
        )
    level = str(values.get("log_level", d.log_level)).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{source}: responder.log_level must be debug, info, warning or error")
    return ResponderConfig(
        listen=parse_listen(str(values["listen"]), f"{source}: responder.listen")
        if "listen" in values
        else d.listen,
        admin_listen=parse_listen(str(values["admin_listen"]), f"{source}: responder.admin_listen")
        if "admin_listen" in values
        else d.admin_listen,
        workers=_int(values, "workers", d.workers, 0, source),
        path=path if path.endswith("/") else path + "/",
        max_request_bytes=_int(values, "max_request_bytes", d.max_request_bytes, 64, source),
        response_lifetime=lifetime,
        refresh_after=refresh,
        max_cache_age=duration("max_cache_age", d.max_cache_age),
        unknown_serials=_choice(
            values, "unknown_serials", UnknownSerials, d.unknown_serials, source
        ),
        nonce=_choice(values, "nonce", NoncePolicy, d.nonce, source),
        max_signing=_int(values, "max_signing", d.max_signing, 1, source),
        max_signing_waiters=_int(values, "max_signing_waiters", d.max_signing_waiters, 0, source),
        cache_entries=_int(values, "cache_entries", d.cache_entries, 0, source),
        feed_interval=feed_interval,
        max_status_age=max_status_age,
        drain_seconds=float(values.get("drain_seconds", d.drain_seconds)),
        request_timeout=request_timeout,
        keepalive_timeout=keepalive_timeout,
        log_level=level,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e


def _strings(values: dict[str, Any], section: str, source: str) -> dict[str, str]:
    for key, value in values.items():
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {section}.{key} must be a string, got {value!r}")
    return dict(values)
