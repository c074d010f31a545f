"""Event packages as data: what each accepts, how long by default, how bodies are checked.

An event package (RFC 6665) fixes the body formats a publication may carry. The compositor
is configured with a set of them; a PUBLISH for any other package is BadEvent (489).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NoReturn
from xml.etree.ElementTree import Element, ParseError as XMLParseError
from xml.parsers import expat

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .composition import Composer, dialog_composer, newest_composer, presence_composer
from .errors import BadEvent, InvalidBody, UnsupportedMediaType

BodyValidator = Callable[[bytes], None]


class _Refused(Exception):
    pass


def _refuse(*_args: object) -> NoReturn:
    raise _Refused


def well_formed_xml(body: bytes) -> None:
    """Reject a body that is not well-formed XML.

    Only well-formedness is checked, so no tree is built: expat runs with no element
    handlers, which is several times cheaper than building one (this runs on every initial
    and modify). Like defusedxml, any DTD is refused outright, so there are no entity
    declarations to expand (billion laughs) and no external references to resolve (XXE):
    only XML's five predefined entities and character references remain.
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    try:
        parser.Parse(body, True)
    except _Refused:
        raise InvalidBody("body is not acceptable XML: DTDs and entity declarations are "
                          "refused") from None
    except (expat.ExpatError, ValueError, LookupError) as error:
        # LookupError: an XML declaration naming an encoding Python does not know
        # (`encoding="nope"`), which expat asks the codecs registry for.
        raise InvalidBody(f"body is not well-formed XML: {error}") from None


def parse_xml(body: bytes) -> Element:
    try:
        return SafeET.fromstring(body, forbid_dtd=True)
    except (XMLParseError, DefusedXmlException, ValueError, LookupError) as error:
        raise InvalidBody(f"body is not well-formed XML: {error}") from None


@dataclass(frozen=True)
class EventPackage:
    """One event package: its name, accepted content types (None: any), default expiry,
    body validator, and composer: how the live publications of one resource become the
    one document a watcher sees (domain.composition; by default the newest body)."""

    name: str
    content_types: tuple[str, ...] | None
    default_expires: int | None = None
    validator: BodyValidator | None = None
    composer: Composer = field(default=newest_composer)
    # Does the composed document carry a per-subscription version (dialog-info does, RFC
    # 4235)? If not, one composition serves every watcher of a resource.
    versioned: bool = False

    def accepts(self, content_type: str) -> bool:
        return self.content_types is None or content_type in self.content_types

    def check_body(self, content_type: str | None, body: bytes) -> str:
        """Return the normalised content type, or raise the refusal the body earns."""
        media = normalise_media_type(content_type or "")
        if not self.accepts(media):
            raise UnsupportedMediaType(list(self.content_types or ()))
        if self.validator is not None:
            self.validator(body)
        return media


def normalise_media_type(content_type: str) -> str:
    """`Application/PIDF+XML; charset=UTF-8` -> `application/pidf+xml`."""
    return content_type.split(";", 1)[0].strip().lower()


PRESENCE = EventPackage(
    "presence", ("application/pidf+xml",), validator=well_formed_xml,
    composer=presence_composer,
)
DIALOG = EventPackage(
    "dialog", ("application/dialog-info+xml",), validator=well_formed_xml,
    composer=dialog_composer, versioned=True,
)
MESSAGE_SUMMARY = EventPackage("message-summary", ("application/simple-message-summary",))

BUILT_IN: dict[str, EventPackage] = {p.name: p for p in (PRESENCE, DIALOG, MESSAGE_SUMMARY)}


def custom_package(name: str, content_types: Iterable[str] | None = None,
                   default_expires: int | None = None) -> EventPackage:
    """A package the operator configures; with no content types it accepts any body."""
    types = tuple(normalise_media_type(t) for t in content_types) if content_types else None
    return EventPackage(name.lower(), types, default_expires)


class EventPackages:
    """The packages a compositor serves, looked up by the Event header's package name."""

    def __init__(self, packages: Iterable[EventPackage]) -> None:
        self._by_name = {p.name: p for p in packages}
        if not self._by_name:
            raise ValueError("at least one event package must be served")

    @classmethod
    def named(cls, names: Iterable[str]) -> "EventPackages":
        """Built-in packages by name; an unknown name becomes a custom any-type package."""
        return cls(BUILT_IN.get(n.strip().lower()) or custom_package(n.strip())
                   for n in names if n.strip())

    def get(self, event: str) -> EventPackage:
        # The Event header is `package[.template];params`; params (id=...) do not change it.
        name = event.split(";", 1)[0].strip().lower()
        try:
            return self._by_name[name]
        except KeyError:
            raise BadEvent(self.names) from None

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def content_types(self) -> list[str]:
        seen: list[str] = []
        for package in self._by_name.values():
            for media in package.content_types or ("*/*",):
                if media not in seen:
                    seen.append(media)
        return seen

    def __iter__(self) -> Iterator[EventPackage]:
        return iter(self._by_name.values())


DEFAULT_PACKAGES = EventPackages(BUILT_IN.values())
