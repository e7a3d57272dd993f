"""crlgen: signs and publishes one full CRL per issuer (RFC 5280), on a schedule."""
