"""Bearer tokens from an OpenID Connect provider: verified, and turned into a principal.

A token is accepted only when its signature verifies with one of the provider's public keys (from
its JWKS endpoint, or a JWKS file for a provider without one), with an algorithm on the allowed
list (asymmetric ones only), it names the configured issuer and audience, it has not expired and
is already valid (``leeway_s`` of clock skew allowed either way), and it carries a subject and a
sluice role (claim ``role_claim``); a user's token also names their customer
(``customer_claim``). The principal's id is ``jwt:<subject>``.

Every failure is :class:`UnauthorizedError` with the reason (expired, wrong audience, unknown key
id, ...), never a server error: a token is untrusted input. The token itself never appears in a
message.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from sluice.config import JWT_ALGORITHMS
from sluice.domain.access import Principal, Role, check_role
from sluice.domain.errors import InvalidInputError, UnauthorizedError

TOKEN_LENGTH_MAX = 16_384
SUBJECT_LENGTH_MAX = 150
JWKS_LIFESPAN_S = 300.0
JWKS_TIMEOUT_S = 10.0
# Asymmetric algorithms only: a shared secret would let anyone who verifies tokens mint them.
ALLOWED_ALGORITHMS = frozenset(JWT_ALGORITHMS)


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    role_claim: str = "sluice_role"
    customer_claim: str = "sluice_customer"
    leeway_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise InvalidInputError("OIDC needs an issuer and an audience")
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise InvalidInputError("OIDC needs exactly one of jwks_url and jwks_file")
        if not self.algorithms:
            raise InvalidInputError("OIDC needs at least one algorithm")
        refused = sorted(set(self.algorithms) - ALLOWED_ALGORITHMS)
        if refused:
            raise InvalidInputError(
                f"OIDC algorithms {', '.join(refused)} are not allowed: one of "
                f"{', '.join(sorted(ALLOWED_ALGORITHMS))}"
            )
        if not 0 <= self.leeway_s <= 600:
            raise InvalidInputError("OIDC leeway_s must be within 0..600")
        if not self.role_claim or not self.customer_claim:
            raise InvalidInputError("OIDC role_claim and customer_claim must not be empty")


class _FileKeys:
    """The keys of a JWKS file, read again when the file changes (a key rotation)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys = self._read()

    def _read(self) -> jwt.PyJWKSet:
        try:
            stat = self._path.stat()
            keys = jwt.PyJWKSet.from_json(self._path.read_text())
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise InvalidInputError(f"cannot read the JWKS file {self._path}: {exc}") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return keys

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            keys = self._keys
        try:
            return keys[kid]
        except KeyError:
            pass
        with self._lock:
            try:
                stat = self._path.stat()
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._keys = self._read()
            except (OSError, InvalidInputError):
                pass  # keep the keys we have; the token is refused below
            keys = self._keys
        try:
            return keys[kid]
        except KeyError:
            raise UnauthorizedError(f"unknown key id {kid!r}") from None


class JwtVerifier:
    """Verifies bearer tokens against one OIDC provider (thread-safe)."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._client: jwt.PyJWKClient | None = None
        self._file: _FileKeys | None = None
        if settings.jwks_url is not None:
            self._client = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=JWKS_LIFESPAN_S,
                timeout=JWKS_TIMEOUT_S,
            )
        else:
            assert settings.jwks_file is not None
            self._file = _FileKeys(settings.jwks_file)

    def authenticate(self, token: str, *, nonce: str | None = None) -> Principal:
        """The principal a token names; :class:`UnauthorizedError` saying why it is refused.
        With ``nonce`` (an ID token of a sign-in this site started), the token's ``nonce``
        claim must be that value."""
        if not token or len(token) > TOKEN_LENGTH_MAX:
            raise UnauthorizedError("malformed token: empty or too long")
        try:
            claims = self._verified_claims(token)
        except UnauthorizedError:
            raise
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("token not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise UnauthorizedError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthorizedError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthorizedError("bad signature") from None
        except jwt.InvalidAlgorithmError as exc:
            raise UnauthorizedError(f"algorithm not allowed: {exc}") from None
        except jwt.PyJWKClientConnectionError as exc:
            raise UnauthorizedError(
                f"the provider's signing keys could not be fetched: {exc}"
            ) from None
        except jwt.PyJWKClientError as exc:
            raise UnauthorizedError(f"no signing key for this token: {exc}") from None
        except jwt.DecodeError as exc:
            raise UnauthorizedError(f"malformed token: {exc}") from None
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(f"invalid token: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise UnauthorizedError(f"invalid token: {type(exc).__name__}") from None
        if nonce is not None:
            found = claims.get("nonce")
            if not isinstance(found, str) or not hmac.compare_digest(found, nonce):
                raise UnauthorizedError("the token's nonce is not this sign-in's")
        return self._principal(claims)

    def _verified_claims(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise UnauthorizedError(
                f"algorithm not allowed: {algorithm!r} (allowed: "
                f"{', '.join(self.settings.algorithms)})"
            )
        if self._client is not None:
            key = self._client.get_signing_key_from_jwt(token)
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise UnauthorizedError("token has no key id (kid)")
            assert self._file is not None
            key = self._file.key(kid)
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=list(self.settings.algorithms),
            audience=self.settings.audience,
            issuer=self.settings.issuer,
            leeway=self.settings.leeway_s,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthorizedError("token has no subject (sub)")
        if len(subject) > SUBJECT_LENGTH_MAX:
            raise UnauthorizedError(
                f"token subject is {len(subject)} characters long (at most {SUBJECT_LENGTH_MAX})"
            )
        role_value = claims.get(self.settings.role_claim)
        if role_value is None:
            raise UnauthorizedError(f"token lacks the {self.settings.role_claim!r} claim (role)")
        if not isinstance(role_value, str):
            raise UnauthorizedError(f"token claim {self.settings.role_claim!r} is not a string")
        try:
            role: Role = check_role(role_value)
        except ValueError as exc:
            raise UnauthorizedError(f"token claim {self.settings.role_claim!r}: {exc}") from None
        customer_id: str | None = None
        if role == "user":
            customer = claims.get(self.settings.customer_claim)
            if not isinstance(customer, str) or not customer or len(customer) > 100:
                raise UnauthorizedError(
                    f"a user's token needs the {self.settings.customer_claim!r} claim (the "
                    "customer it acts for)"
                )
            customer_id = customer
        return Principal(id=f"jwt:{subject}", role=role, customer_id=customer_id)
