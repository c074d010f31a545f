"""Composition: the one document a watcher sees, made from a resource's live publications.

RFC 3903 section 10.3 leaves composition to each event package. The policies here:

- presence (RFC 3863, PIDF): one `presence` document whose `entity` is the resource, holding
  the tuples of every live publication, newest publication first, then their top-level
  notes, then everything else they carry (RFC 4479 `dm:person` and `dm:device` among it).
  `id` attributes of those top-level elements are one XML ID space, so a value used by
  two publications is kept by one of them (the one whose key sorts first, so the choice does
  not move when the order of publications changes) and renamed in the others to
  `<id>-<8 hex digits of a hash of the publication's key>` (an NCName). With no live
  publication the document has no tuples: nothing is known.
- dialog (RFC 4235): one `dialog-info` document with the dialogs of every live publication,
  `state="full"`, and the `version` the caller passes (it counts the NOTIFYs of one
  subscription, so the notifier keeps it, not the publications). Dialog ids get the same
  uniqueness treatment as tuple ids.
- message-summary (RFC 3842) and any other package: the newest publication's body.

Everything is pure: bytes in, bytes out, no clock. Bodies were checked for well-formedness
when published, but a body that does not parse here (or is not the package's document, or
is nested deeper than MAX_DEPTH) is skipped, never fatal. Parsing goes through defusedxml with DTDs refused, as domain.packages
does; the output is serialised with xml.etree with the package's namespace as the default
namespace and readable prefixes for the well-known others (`dm`, `rpid`, ...).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Sequence
from xml.etree.ElementTree import Element, ParseError as XMLParseError, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DATA_MODEL_NS = "urn:ietf:params:xml:ns:pidf:data-model"
DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
XML_NS = "http://www.w3.org/XML/1998/namespace"

PIDF_TYPE = "application/pidf+xml"
DIALOG_INFO_TYPE = "application/dialog-info+xml"

# Prefixes for namespaces a presence or dialog document commonly carries; any other
# namespace gets ns0, ns1, ... in order of first use.
PREFIXES: dict[str, str] = {
    DATA_MODEL_NS: "dm",
    "urn:ietf:params:xml:ns:pidf:rpid": "rpid",
    "urn:ietf:params:xml:ns:pidf:cipid": "c",
    "urn:ietf:params:xml:ns:pidf:caps": "caps",
    "urn:ietf:params:xml:ns:pidf:geopriv10": "gp",
    "urn:ietf:params:xml:ns:pidf:status:rpid": "rpid-status",
    "urn:ietf:params:xml:ns:sa-dlg-info": "sa",
}


# Deeper bodies are skipped: xml.etree serialises recursively, so a hostile nesting would
# exhaust the interpreter's stack. Real presence and dialog documents are under ten deep.
MAX_DEPTH = 100


@dataclass(frozen=True)
class Contribution:
    """One live publication as composition sees it. `key` names the publication stably
    (its id, not its entity-tag, which changes on every refresh)."""

    key: str
    body: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class Composition:
    """The composed state: its content type (None: a package with no fixed format and
    nothing published), the document, and the keys of the publications that went into it,
    in document order."""

    content_type: str | None
    body: bytes
    contributors: tuple[str, ...] = ()


Composer = Callable[[str, Sequence[Contribution], int], Composition]
"""(resource, live publications newest first, version) -> Composition"""


# ---- the package composers --------------------------------------------------------------

def presence_composer(resource: str, contributions: Sequence[Contribution],
                      version: int = 0) -> Composition:
    """PIDF: every live publication's tuples under one `presence` (version unused)."""
    body, used = _compose(PIDF_NS, "presence", {"entity": resource}, contributions,
                          _pidf_order)
    return Composition(PIDF_TYPE, body, used)


def dialog_composer(resource: str, contributions: Sequence[Contribution],
                    version: int = 0) -> Composition:
    """dialog-info: every live publication's dialogs, full state, the caller's version."""
    if version < 0:
        raise ValueError("a dialog-info version is 0 or more")
    attributes = {"version": str(version), "state": "full", "entity": resource}
    body, used = _compose(DIALOG_INFO_NS, "dialog-info", attributes, contributions,
                          _dialog_order)
    return Composition(DIALOG_INFO_TYPE, body, used)


def newest_composer(resource: str, contributions: Sequence[Contribution],
                    version: int = 0) -> Composition:
    """The newest publication's body as it is (message-summary and unknown packages)."""
    if not contributions:
        return Composition(None, b"")
    newest = contributions[0]
    return Composition(newest.content_type, newest.body, (newest.key,))


# ---- the same on plain bodies -----------------------------------------------------------

def compose_presence(resource: str, bodies_newest_first: Sequence[bytes]) -> bytes:
    return presence_composer(resource, _numbered(bodies_newest_first)).body


def compose_dialog_info(resource: str, bodies_newest_first: Sequence[bytes],
                        version: int) -> bytes:
    return dialog_composer(resource, _numbered(bodies_newest_first), version).body


def compose_newest(bodies_newest_first: Sequence[bytes]) -> bytes:
    return bodies_newest_first[0] if bodies_newest_first else b""


def _numbered(bodies: Sequence[bytes]) -> list[Contribution]:
    # Zero-padded so that the keys sort in the order given: the first body keeps its ids.
    return [Contribution(f"{index:08d}", body) for index, body in enumerate(bodies)]


# ---- merging ----------------------------------------------------------------------------

def _pidf_order(child: Element) -> int:
    """PIDF's schema order: tuples, then notes, then elements of other namespaces."""
    if child.tag == f"{{{PIDF_NS}}}tuple":
        return 0
    if child.tag == f"{{{PIDF_NS}}}note":
        return 1
    return 2


def _dialog_order(child: Element) -> int:
    return 0 if child.tag == f"{{{DIALOG_INFO_NS}}}dialog" else 1


def _compose(namespace: str, root_name: str, attributes: dict[str, str],
             contributions: Sequence[Contribution],
             order: Callable[[Element], int]) -> tuple[bytes, tuple[str, ...]]:
    parsed: list[tuple[Contribution, Element]] = []
    for contribution in contributions:
        root = _parse(contribution.body)
        if (root is not None and root.tag == f"{{{namespace}}}{root_name}"
                and _shallow(root, MAX_DEPTH)):
            parsed.append((contribution, root))
    _make_ids_unique(parsed)
    document = Element(f"{{{namespace}}}{root_name}", attributes)
    groups: dict[int, list[Element]] = {}
    for _, root in parsed:
        for child in root:
            groups.setdefault(order(child), []).append(child)
    for rank in sorted(groups):
        document.extend(groups[rank])
    return _serialise(document, namespace), tuple(c.key for c, _ in parsed)


def _parse(body: bytes) -> Element | None:
    try:
        root: Element = SafeET.fromstring(body, forbid_dtd=True)
    except (XMLParseError, DefusedXmlException, ValueError, LookupError):
        return None
    return root


def _shallow(root: Element, limit: int) -> bool:
    """Is the tree at most `limit` elements deep? (Checked without recursion.)"""
    level: list[Element] = [root]
    for _ in range(limit):
        level = [child for element in level for child in element]
        if not level:
            return True
    return False


_NCNAME = re.compile(r"[A-Za-z_][\w.\-]*\Z")


def _short(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def _ncname(value: str) -> str:
    """`value` made a valid NCName (ASCII letters, digits, `_`, `-`, `.`; not starting
    with a digit, `-` or `.`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", value)
    return cleaned if _NCNAME.match(cleaned) else f"_{cleaned}"


def _make_ids_unique(parsed: list[tuple[Contribution, Element]]) -> None:
    """Rename `id`s of top-level elements that another publication uses too (see the
    module docstring). A rename never takes an id any publication uses."""
    owner: dict[str, str] = {}
    for contribution, root in parsed:
        for child in root:
            ident = child.get("id")
            if ident is not None:
                held = owner.get(ident)
                owner[ident] = contribution.key if held is None else min(held, contribution.key)
    taken: set[str] = set()
    for contribution, root in parsed:
        for child in root:
            ident = child.get("id")
            if ident is None:
                continue
            if owner[ident] == contribution.key and ident not in taken:
                taken.add(ident)
                continue
            base = _ncname(f"{ident}-{_short(contribution.key)}")
            candidate, n = base, 1
            while candidate in taken or candidate in owner:
                n += 1
                candidate = f"{base}-{n}"
            child.set("id", candidate)
            taken.add(candidate)


# ---- serialising ------------------------------------------------------------------------

def _serialise(root: Element, default_namespace: str) -> bytes:
    """UTF-8 XML with `default_namespace` unprefixed and known prefixes for the others.

    Names are written out here (`dm:person`, `xmlns:dm` on the root) rather than through
    ElementTree.register_namespace, which would change a process-wide table."""
    prefixes: dict[str, str] = {}

    def prefix(uri: str) -> str:
        if uri == XML_NS:
            return "xml"
        chosen = prefixes.get(uri)
        if chosen is None:
            chosen = PREFIXES.get(uri)
            if chosen is None or chosen in prefixes.values():
                chosen = next(f"ns{n}" for n in range(len(prefixes) + 1)
                              if f"ns{n}" not in prefixes.values())
            prefixes[uri] = chosen
        return chosen

    def rename(element: Element, in_scope: str | None) -> None:
        tag = element.tag
        attributes: dict[str, str] = {}
        if tag[:1] == "{":
            uri, local = tag[1:].split("}", 1)
        else:
            uri, local = "", tag  # in no namespace
        if uri == default_namespace or uri == "":
            element.tag = local
            if in_scope != uri:
                attributes["xmlns"] = uri  # (re)declare the default where it changes
            in_scope = uri
        else:
            element.tag = f"{prefix(uri)}:{local}"
        for name, value in element.attrib.items():
            if name[:1] == "{":
                attr_uri, attr_local = name[1:].split("}", 1)
                name = f"{prefix(attr_uri)}:{attr_local}"
            attributes[name] = value
        element.attrib = attributes
        for child in element:
            rename(child, in_scope)

    rename(root, None)
    declarations = {f"xmlns:{p}": uri for uri, p in sorted(prefixes.items(),
                                                         key=lambda item: item[1])
                    if p != "xml"}
    root.attrib = {"xmlns": root.attrib.pop("xmlns", default_namespace), **declarations,
                   **root.attrib}
    # typeshed types tostring() with an encoding other than "unicode" as Any; "utf-8"
    # gives bytes.
    document: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return document
