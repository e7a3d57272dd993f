"""Sources answer OCSP requests; each feature is a Source wrapping another.

    FilterSource -> CacheSource -> LiveSource

`main` (ocspd.app) builds the innermost first and wraps outward.
"""

from ocspd.sources.base import Response, Source

__all__ = ["Response", "Source"]
