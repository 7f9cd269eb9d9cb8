"""The Canton adapter: a client of a real participant node's JSON Ledger API v2 and of the token
standard's Registry API, behind the same ports as the embedded ledger.

* :class:`LedgerHttp` — the transport (bearer auth, retries of reads, error translation,
  WebSocket streams);
* :class:`CantonLedgerClient` — :class:`sluice.ports.LedgerClient` (updates over WebSocket with the
  HTTP list form as fallback, the ledger end, offsets by record time) plus further reads;
* :class:`CantonCommands` — :class:`sluice.ports.LedgerCommands` (submit-and-wait for local
  parties, prepare + execute with an Ed25519 signature for external ones);
* :class:`HttpRegistry` / :func:`registry_lookup` — :class:`sluice.ports.RegistryClient`;
* token sources: :class:`NoAuth`, :class:`StaticToken`, :class:`SelfSignedToken`,
  :class:`OAuth2ClientCredentials`.

Each module's docstring says what it guarantees.
"""

from .auth import NoAuth, OAuth2ClientCredentials, SelfSignedToken, StaticToken, TokenSource
from .client import CantonLedgerClient
from .commands import CantonCommands, Ed25519Signer
from .errors import (
    CantonAuthError,
    CantonError,
    CantonReadError,
    CantonUnavailableError,
    ListTooLargeError,
    MalformedResponseError,
    NoWebSocketError,
)
from .registry import HttpRegistry, registry_lookup
from .transport import LedgerHttp

__all__ = [
    "CantonAuthError",
    "CantonCommands",
    "CantonError",
    "CantonLedgerClient",
    "CantonReadError",
    "CantonUnavailableError",
    "Ed25519Signer",
    "HttpRegistry",
    "LedgerHttp",
    "ListTooLargeError",
    "MalformedResponseError",
    "NoAuth",
    "NoWebSocketError",
    "OAuth2ClientCredentials",
    "SelfSignedToken",
    "StaticToken",
    "TokenSource",
    "registry_lookup",
]
