"""The handful of domain exceptions.

Inner layers raise these with context; only the edges (the CLI, later the HTTP handler) turn
them into exit codes or OCSP statuses.
"""


class OcspdError(Exception):
    """Base class: the message is meant for an operator and fits on one line."""


class ConfigError(OcspdError):
    """The configuration is invalid; the message names the field and the bound."""


class NotFound(OcspdError):
    """An issuer or certificate the caller named does not exist."""


class InvalidInput(OcspdError):
    """Input from an operator or a file that cannot be accepted as it is."""


class StatusTransitionRefused(OcspdError):
    """A status change the rules forbid (RM1.3: revoked never returns to good)."""


class NotPermitted(OcspdError):
    """The login does not hold the role a command needs (M1.2), or dual control (RM1.4)
    forbids what it asked for."""


class AuditKeyError(OcspdError):
    """The audit MAC key is missing, unreadable or unusable (AA7.1)."""


class SigningKeyError(OcspdError):
    """A signing key cannot be used: missing, mismatched, expired certificate, bad token."""


class Unavailable(OcspdError):
    """A dependency (database, token) cannot answer right now."""


class Unauthorized(OcspdError):
    """A request about an issuer this responder does not serve (RFC 6960 `unauthorized`)."""


class TryLater(Unavailable):
    """Too much work in flight to take more now (RFC 6960 `tryLater`)."""
