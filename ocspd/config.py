"""Configuration: a TOML file plus environment overrides, validated once at start-up.

Order of precedence (highest first): environment variables, the file named by --config or
OCSPD_CONFIG, then defaults. Every field is documented in deploy/ocspd.example.toml.
"""

from __future__ import annotations

import os
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
    "OCSPD_PKCS11_MODULE": ("pkcs11", "module"),
    "OCSPD_PKCS11_PIN_SOURCE": ("pkcs11", "pin_source"),
}

_KNOWN: Mapping[str, frozenset[str]] = {
    "database": frozenset({"url", "responder_url"}),
    "pkcs11": frozenset({"module", "pin_source"}),
}


@dataclass(frozen=True)
class DatabaseConfig:
    # libpq DSN of the status database. The operator CLI uses it as it is; the responder
    # connects with it and then switches to the read-only ocspd_responder role (R11).
    url: str = ""
    # Optional separate login for the responder (a production setup gives it its own
    # credentials); when empty the responder uses `url` plus SET ROLE.
    responder_url: str = ""


@dataclass(frozen=True)
class Pkcs11Config:
    # Default PKCS#11 module for pkcs11: key URIs that carry no module-path attribute.
    module: str = ""
    # Default PIN source (RFC 7512 pin-source: file:/path, or env:NAME) for URIs without one.
    pin_source: str = ""


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    pkcs11: Pkcs11Config = field(default_factory=Pkcs11Config)
    source: str = "defaults"

    def require_database_url(self) -> str:
        if not self.database.url:
            raise ConfigError(
                "no database configured: set OCSPD_DATABASE_URL to a libpq DSN "
                "(e.g. postgresql://ocspd@db.example/ocspd) or [database] url in the config file"
            )
        return self.database.url


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
        source=source,
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
