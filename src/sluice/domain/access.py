"""Who may do what (DESIGN §10): roles, the capabilities the matrix gives them, principals, and
the permission every HTTP endpoint declares.

The matrix (RA router admin, CU component updates, EP emergency pause, UO user operations,
CO compliance override)::

    role                 RA   CU   EP   UO             CO
    super admin          yes  yes  yes  yes            yes
    system admin         yes  no   yes  yes            no
    compliance officer   no   no   yes  no             yes
    operator             no   no   no   yes            no
    user                 no   no   no   own accounts   no

A permission names the capabilities any one of which admits a principal, and whether a user may
use it on their own customer's resources. "Authenticated" admits every principal; "public" needs
no credentials at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["super_admin", "system_admin", "compliance_officer", "operator", "user"]
Capability = Literal[
    "router_admin", "component_updates", "emergency_pause", "user_operations", "compliance_override"
]

ROLES: tuple[Role, ...] = ("super_admin", "system_admin", "compliance_officer", "operator", "user")
CAPABILITIES: tuple[Capability, ...] = (
    "router_admin",
    "component_updates",
    "emergency_pause",
    "user_operations",
    "compliance_override",
)

MATRIX: dict[Role, frozenset[Capability]] = {
    "super_admin": frozenset(CAPABILITIES),
    "system_admin": frozenset({"router_admin", "emergency_pause", "user_operations"}),
    "compliance_officer": frozenset({"emergency_pause", "compliance_override"}),
    "operator": frozenset({"user_operations"}),
    # A user's "user operations" reach only their own customer's accounts.
    "user": frozenset({"user_operations"}),
}


def check_role(value: str) -> Role:
    """``value`` as a role, or ValueError naming the roles there are."""
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"unknown role {value!r}: one of {', '.join(ROLES)}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key (``id`` = ``key:<key id>``) or a token's subject
    (``jwt:<subject>``), with a role and, for users, the customer they act for."""

    id: str
    role: Role
    customer_id: str | None = None

    def __post_init__(self) -> None:
        if self.role == "user" and not self.customer_id:
            raise ValueError("a principal with role 'user' must name its customer")

    @property
    def capabilities(self) -> frozenset[Capability]:
        return MATRIX[self.role]

    @property
    def is_user(self) -> bool:
        return self.role == "user"

    def may(self, capability: Capability) -> bool:
        """Whether the role has ``capability`` at all (for a user, on their own accounts only)."""
        return capability in MATRIX[self.role]

    @property
    def actor(self) -> str:
        """How the audit trail names this principal."""
        return f"{self.role}:{self.id}"


@dataclass(frozen=True, slots=True)
class Permission:
    """What an endpoint requires: ``public`` (nothing), ``authenticated`` (any principal), or
    any one of ``capabilities``; ``own`` lets a user in on their own customer's resources."""

    capabilities: frozenset[Capability] = frozenset()
    own: bool = False
    public: bool = False
    authenticated: bool = False

    def admits(self, principal: Principal | None) -> bool:
        """Whether ``principal`` may call the endpoint at all (ownership is checked after)."""
        if self.public:
            return True
        if principal is None:
            return False
        if self.authenticated:
            return True
        if principal.is_user:
            return self.own and bool(principal.capabilities & self.capabilities)
        return bool(principal.capabilities & self.capabilities)

    def describe(self) -> str:
        if self.public:
            return "public"
        if self.authenticated:
            return "any authenticated principal"
        names = " or ".join(sorted(self.capabilities))
        return names + (" (users: own customer only)" if self.own else "")


def requires(*capabilities: Capability, own: bool = False) -> Permission:
    return Permission(capabilities=frozenset(capabilities), own=own)


PUBLIC = Permission(public=True)
AUTHENTICATED = Permission(authenticated=True)


def roles_admitted(permission: Permission) -> frozenset[Role]:
    """The roles the matrix lets through ``permission`` (users: on their own resources)."""
    return frozenset(
        role
        for role in ROLES
        if permission.admits(Principal("probe", role, "probe" if role == "user" else None))
    )
