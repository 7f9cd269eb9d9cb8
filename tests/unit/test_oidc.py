"""Bearer tokens from an OIDC provider (sluice.api.oidc), with a provider simulated locally.

An RSA key pair is generated with ``cryptography``, its public half written to a JWKS file, and
tokens signed with PyJWT. Covers: a valid token gives the principal its claims name; each way a
token can be wrong (expired, not yet valid, wrong issuer or audience, unknown key id, bad
signature, an algorithm off the list, a missing subject or role, an unknown role, a user without
a customer, an over-long subject, garbage) is an UnauthorizedError saying why; a rotated key in
the JWKS file is picked up; settings that would weaken verification are refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.domain.access import Principal
from sluice.domain.errors import InvalidInputError, UnauthorizedError

ISSUER = "https://id.example.com/realms/exchange"
AUDIENCE = "sluice-api"


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return jwk


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, "k1")]}))
    return path


@pytest.fixture
def verifier(jwks_file: Path) -> JwtVerifier:
    return JwtVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "sluice_role": "system_admin",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    key: Any, payload: dict[str, Any], *, kid: str | None = "k1", algorithm: str = "RS256"
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def test_a_valid_token_names_its_principal(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert verifier.authenticate(sign(rsa_key, claims())) == Principal("jwt:alice", "system_admin")
    user = verifier.authenticate(
        sign(rsa_key, claims(sub="bob", sluice_role="user", sluice_customer="c-1"))
    )
    assert user == Principal("jwt:bob", "user", "c-1")


def test_a_staff_token_ignores_a_customer_claim(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    principal = verifier.authenticate(sign(rsa_key, claims(sluice_customer="c-1")))
    assert principal.customer_id is None


def test_clock_skew_within_the_leeway_is_tolerated(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    now = int(time.time())
    token = sign(rsa_key, claims(exp=now - 10, nbf=now + 10, iat=now))
    assert verifier.authenticate(token).id == "jwt:alice"


# The claims are built when each test runs (not when the module is collected), so a long
# test session cannot make a "valid" token expire before it is used.
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (lambda now: {"exp": now - 3600}, "expired"),
        (lambda now: {"nbf": now + 3600}, "not yet valid"),
        (lambda now: {"iss": "https://evil.example.com"}, "wrong issuer"),
        (lambda now: {"aud": "another-api"}, "wrong audience"),
        (lambda now: {"exp": None}, "'exp'"),
        (lambda now: {"sub": None}, "'sub'"),
        (lambda now: {"sluice_role": None}, "sluice_role"),
        (lambda now: {"sluice_role": "root"}, "unknown role"),
        (lambda now: {"sluice_role": ["super_admin"]}, "not a string"),
        (lambda now: {"sluice_role": "user"}, "sluice_customer"),
        (lambda now: {"sub": "s" * 151}, "too long|at most 150"),
    ],
)
def test_a_wrong_token_is_refused_saying_why(
    verifier: JwtVerifier,
    rsa_key: rsa.RSAPrivateKey,
    overrides: Callable[[int], dict[str, Any]],
    reason: str,
) -> None:
    payload = claims(**overrides(int(time.time())))
    with pytest.raises(UnauthorizedError, match=reason):
        verifier.authenticate(sign(rsa_key, payload))


def test_a_token_from_an_unknown_key_is_refused(
    verifier: JwtVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(UnauthorizedError, match="unknown key id 'k2'"):
        verifier.authenticate(sign(other_key, claims(), kid="k2"))
    with pytest.raises(UnauthorizedError, match="no key id"):
        verifier.authenticate(sign(other_key, claims(), kid=None))


def test_a_token_signed_by_another_key_under_a_known_id_is_refused(
    verifier: JwtVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(UnauthorizedError, match="bad signature"):
        verifier.authenticate(sign(other_key, claims(), kid="k1"))


def test_a_tampered_token_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    header, _, signature = sign(rsa_key, claims()).split(".")
    forged = jwt.utils.base64url_encode(
        json.dumps(claims(sluice_role="super_admin", sub="mallory")).encode()
    ).decode()
    with pytest.raises(UnauthorizedError, match="bad signature"):
        verifier.authenticate(f"{header}.{forged}.{signature}")


def test_algorithms_off_the_list_are_refused(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(UnauthorizedError, match="algorithm not allowed"):
        verifier.authenticate(
            sign("a-shared-secret-of-enough-length!", claims(), algorithm="HS256")
        )
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(UnauthorizedError, match="algorithm not allowed"):
        verifier.authenticate(unsigned)
    with pytest.raises(UnauthorizedError, match="algorithm"):
        verifier.authenticate(sign(rsa_key, claims(), algorithm="RS512"))


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "e30.e30.", "x" * 20_000, "Bearer abc"])
def test_garbage_is_refused_as_unauthorized(verifier: JwtVerifier, garbage: str) -> None:
    with pytest.raises(UnauthorizedError):
        verifier.authenticate(garbage)


def test_a_rotated_key_is_read_from_the_jwks_file(
    verifier: JwtVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    token = sign(other_key, claims(sub="carol"), kid="k2")
    with pytest.raises(UnauthorizedError, match="unknown key id"):
        verifier.authenticate(token)
    jwks_file.write_text(
        json.dumps({"keys": [public_jwk(rsa_key, "k1"), public_jwk(other_key, "k2"), {}]})
    )
    assert verifier.authenticate(token).id == "jwt:carol"


def test_an_ec_key_verifies_es256_tokens(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="e1", alg="ES256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    verifier = JwtVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=path))
    token = sign(key, claims(sluice_role="operator"), kid="e1", algorithm="ES256")
    assert verifier.authenticate(token) == Principal("jwt:alice", "operator")


def test_custom_claim_names_are_used(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(
        OidcSettings(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_file=jwks_file,
            role_claim="role",
            customer_claim="customer",
        )
    )
    token = sign(rsa_key, claims(sluice_role=None, role="user", customer="c-9"))
    assert verifier.authenticate(token) == Principal("jwt:alice", "user", "c-9")


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithms": ("HS256",)},
        {"algorithms": ("none",)},
        {"algorithms": ()},
        {"jwks_url": "https://id.example.com/jwks"},  # both a URL and a file
        {"issuer": ""},
        {"leeway_s": -1.0},
    ],
)
def test_settings_that_weaken_verification_are_refused(
    jwks_file: Path, overrides: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": jwks_file}
    arguments.update(overrides)
    with pytest.raises(InvalidInputError):
        OidcSettings(**arguments)


def test_an_unreadable_jwks_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("not json")
    with pytest.raises(InvalidInputError, match="JWKS file"):
        JwtVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=path))


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    body = json.dumps({"keys": [public_jwk(rsa_key, "k1")]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_keys_are_fetched_from_the_providers_jwks_url(
    jwks_server: str, rsa_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwtVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_server))
    assert verifier.authenticate(sign(rsa_key, claims())).id == "jwt:alice"
    with pytest.raises(UnauthorizedError, match="signing key"):
        verifier.authenticate(sign(other_key, claims(), kid="k2"))


def test_an_unreachable_jwks_url_refuses_the_token_rather_than_failing(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the socket is closed
    verifier = JwtVerifier(
        OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/certs")
    )
    with pytest.raises(UnauthorizedError, match="could not be fetched"):
        verifier.authenticate(sign(rsa_key, claims()))
