"""The one compiled part: ocspd.audit._chain, the request audit's HMAC chain (in C, against
OpenSSL's libcrypto). Optional: without a compiler or OpenSSL's headers the build goes on,
and ocspd chains records in Python instead (the same bytes, a few µs more per request)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ocspd.audit._chain",
            ["ocspd/audit/_chain.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
