"""Builds the optional C extension ``sluice.por._merkle`` (the Merkle-sum tree of the proof of
liabilities); everything else about the package is in ``pyproject.toml``.

The extension links OpenSSL's libcrypto for SHA-256 (``libssl-dev`` provides the headers;
``make install`` installs it when missing). It is optional: when it cannot be compiled the
install still succeeds and ``sluice.por`` uses its pure-Python construction, which gives the
same roots and proofs, only slower (``sluice.por.tree.NATIVE`` says which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sluice.por._merkle",
            ["src/sluice/por/_merkle.c"],
            depends=[
                "src/sluice/por/_merkle_hashing.h",
                "src/sluice/por/_merkle_parallel.h",
                "src/sluice/por/_merkle_units.h",
            ],
            libraries=["crypto"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
