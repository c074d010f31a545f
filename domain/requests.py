"""RFC 3903 Table 1: which operation a PUBLISH asks for, and the checks before it.

`classify` is pure: it takes the request's facts and the compositor's policy and returns
the operation with its validated inputs (normalised content type, granted expiry), or
raises the refusal the request earns. Loading and changing the aggregate is the
application's job.

    Operation | Body | SIP-If-Match | Expires value
    Initial   | yes  | no           | > 0
    Refresh   | no   | yes          | > 0
    Modify    | yes  | yes          | > 0
    Remove    | no   | yes          | 0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .errors import IntervalTooBrief, MissingBody
from .packages import EventPackage, EventPackages
from .publication import NO_AUDIT, Audit


class Operation(Enum):
    INITIAL = "initial"
    REFRESH = "refresh"
    MODIFY = "modify"
    REMOVE = "remove"
    DISCARD = "discard"  # initial with Expires: 0 stores nothing (design decision 6)


@dataclass(frozen=True)
class ExpiryPolicy:
    """The operator's bounds on publication lifetimes, in seconds."""

    default_expires: int = 60  # NkSIP's default when a request carries no Expires
    min_expires: int = 1
    max_expires: int = 3600

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.max_expires:
            raise ValueError("need 0 < min_expires <= max_expires")
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("default_expires must lie between min_expires and max_expires")

    def grant(self, requested: int | None, package: EventPackage) -> int:
        """The expiry the compositor grants; 0 means 'remove'. RFC 3903 section 6 step 4."""
        if requested is None:
            requested = package.default_expires or self.default_expires
        if requested < 0:
            raise IntervalTooBrief(self.min_expires)
        return within_bounds(requested, self.min_expires, self.max_expires)


def within_bounds(requested: int, min_expires: int, max_expires: int) -> int:
    """An expiry the server grants (RFC 3903 section 6, RFC 6665 section 4.2.1.1): 0 stays 0
    (remove, unsubscribe), a shorter one is refused with 423, a longer one is shortened."""
    if requested == 0:
        return 0
    if requested < min_expires:
        raise IntervalTooBrief(min_expires)
    return min(requested, max_expires)


@dataclass(frozen=True)
class PublishRequest:
    """What a PUBLISH carries that matters to the compositor."""

    aor: str
    event: str
    body: bytes | None = None
    content_type: str | None = None
    expires: int | None = None
    if_match: str | None = None
    audit: Audit = field(default=NO_AUDIT)

    @property
    def has_body(self) -> bool:
        return bool(self.body)


@dataclass(frozen=True)
class Classified:
    operation: Operation
    package: EventPackage
    expires: int  # granted seconds; 0 for remove / discard
    content_type: str | None = None  # normalised, for initial and modify


def classify(request: PublishRequest, packages: EventPackages,
             policy: ExpiryPolicy) -> Classified:
    package = packages.get(request.event)
    expires = policy.grant(request.expires, package)
    if request.if_match is None:
        if not request.has_body:
            raise MissingBody("an initial PUBLISH must carry a body")
        content_type = package.check_body(request.content_type, request.body or b"")
        if expires == 0:
            return Classified(Operation.DISCARD, package, 0, content_type)
        return Classified(Operation.INITIAL, package, expires, content_type)
    if expires == 0:
        return Classified(Operation.REMOVE, package, 0)
    if request.has_body:
        content_type = package.check_body(request.content_type, request.body or b"")
        return Classified(Operation.MODIFY, package, expires, content_type)
    return Classified(Operation.REFRESH, package, expires)
