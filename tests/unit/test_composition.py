"""Composition per event package (domain/composition.py): pure, bytes in, bytes out."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from domain import (BUILT_IN, Composition, Contribution, compose_dialog_info, compose_newest,
                    compose_presence, dialog_composer, newest_composer, presence_composer)
from domain.composition import DATA_MODEL_NS, DIALOG_INFO_NS, PIDF_NS

ALICE = "sip:alice@example.com"
P = f"{{{PIDF_NS}}}"
DM = f"{{{DATA_MODEL_NS}}}"
D = f"{{{DIALOG_INFO_NS}}}"
NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def pidf(*tuples: tuple[str, str], extra: str = "", entity: str = "pres:someone@else") -> bytes:
    body = "".join(f'<tuple id="{i}"><status><basic>{s}</basic></status></tuple>'
                   for i, s in tuples)
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<presence xmlns="{PIDF_NS}" xmlns:dm="{DATA_MODEL_NS}" '
            f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{entity}">'
            f'{body}{extra}</presence>').encode()


def dialog_info(*dialogs: tuple[str, str], version: int = 7, state: str = "partial") -> bytes:
    body = "".join(f'<dialog id="{i}" direction="initiator"><state>{s}</state></dialog>'
                   for i, s in dialogs)
    return (f'<dialog-info xmlns="{DIALOG_INFO_NS}" version="{version}" state="{state}" '
            f'entity="{ALICE}">{body}</dialog-info>').encode()


def parse(document: bytes) -> ET.Element:
    return ET.fromstring(document)


def tuples(document: bytes) -> list[tuple[str, str]]:
    return [(t.get("id"), t.findtext(f"{P}status/{P}basic")) for t in parse(document)
            if t.tag == f"{P}tuple"]


# ---- presence ---------------------------------------------------------------------------

def test_presence_merges_the_tuples_of_every_publication_newest_first():
    newest, older = pidf(("a", "closed")), pidf(("b", "open"), ("c", "open"))
    document = compose_presence(ALICE, [newest, older])
    root = parse(document)
    assert root.tag == f"{P}presence" and root.get("entity") == ALICE
    assert tuples(document) == [("a", "closed"), ("b", "open"), ("c", "open")]
    assert document.startswith(b"<?xml")
    # The PIDF namespace is the default one: readable, and what naive parsers expect.
    assert b'<presence xmlns="urn:ietf:params:xml:ns:pidf"' in document
    assert b'<tuple id="a">' in document


def test_presence_with_nothing_live_is_a_valid_document_that_knows_nothing():
    for document in (compose_presence(ALICE, []), compose_presence(ALICE, [b"<broken"])):
        root = parse(document)
        assert root.tag == f"{P}presence" and root.get("entity") == ALICE
        assert list(root) == []


def test_duplicate_tuple_ids_are_renamed_in_later_publications_to_valid_unique_ids():
    document = compose_presence(ALICE, [pidf(("t1", "open")), pidf(("t1", "closed")),
                                        pidf(("t1", "away"), ("x", "open"))])
    found = tuples(document)
    ids = [i for i, _ in found]
    assert found[0] == ("t1", "open")  # the first keeps its id
    assert [s for _, s in found] == ["open", "closed", "away", "open"]
    assert len(set(ids)) == len(ids)
    assert all(NCNAME.match(i) for i in ids)
    assert all(i.startswith("t1-") for i in ids[1:3]) and ids[3] == "x"
    # Deterministic: the same input gives the same bytes.
    assert document == compose_presence(ALICE, [pidf(("t1", "open")), pidf(("t1", "closed")),
                                                pidf(("t1", "away"), ("x", "open"))])


def test_the_publication_that_keeps_a_shared_id_does_not_change_when_the_order_does():
    one = Contribution("0001", pidf(("t1", "open")))
    two = Contribution("0002", pidf(("t1", "closed")))
    forwards = tuples(presence_composer(ALICE, [one, two]).body)
    backwards = tuples(presence_composer(ALICE, [two, one]).body)
    assert sorted(forwards) == sorted(backwards)
    assert ("t1", "open") in forwards  # publication "0001" holds t1 either way


def test_a_renamed_id_never_takes_an_id_another_publication_uses():
    # The obvious new name for the second "t1" is already used by the first publication.
    from domain.composition import _short

    taken = f"t1-{_short('00000001')}"
    document = compose_presence(ALICE, [pidf(("t1", "open"), (taken, "open")),
                                        pidf(("t1", "closed"))])
    ids = [i for i, _ in tuples(document)]
    assert len(set(ids)) == 3 and ids[:2] == ["t1", taken]


def test_ids_that_are_not_ncnames_become_valid_when_renamed():
    document = compose_presence(ALICE, [pidf(("1 a", "open")), pidf(("1 a", "closed"))])
    renamed = tuples(document)[1][0]
    assert NCNAME.match(renamed)


def test_rfc4479_person_and_device_elements_are_kept_after_the_tuples():
    person = ('<dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities>'
              '</dm:person>')
    device = '<dm:device id="d1"><dm:deviceID>urn:uuid:1</dm:deviceID></dm:device>'
    note = '<note xml:lang="en">at lunch</note>'
    document = compose_presence(ALICE, [pidf(("t1", "open"), extra=note + person),
                                        pidf(("t2", "open"), extra=person + device)])
    root = parse(document)
    assert [child.tag for child in root] == [
        f"{P}tuple", f"{P}tuple", f"{P}note", f"{DM}person", f"{DM}person", f"{DM}device"]
    people = root.findall(f"{DM}person")
    assert people[0].get("id") == "p1" and people[1].get("id") != "p1"
    assert people[0].find("{urn:ietf:params:xml:ns:pidf:rpid}activities") is not None
    assert root.find(f"{P}note").get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    # Readable, well-known prefixes, declared once on the root.
    assert b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"' in document
    assert b"<dm:person" in document and b"<rpid:on-the-phone" in document


def test_unknown_namespaces_and_elements_in_no_namespace_survive_the_round_trip():
    extra = '<x:thing xmlns:x="urn:example:x" x:a="1"/><plain xmlns=""><inner/></plain>'
    root = parse(compose_presence(ALICE, [pidf(("t1", "open"), extra=extra)]))
    thing = root.find("{urn:example:x}thing")
    assert thing is not None and thing.get("{urn:example:x}a") == "1"
    plain = root.find("plain")
    assert plain is not None and plain.find("inner") is not None


def test_bodies_that_do_not_parse_or_are_not_pidf_are_skipped():
    hostile = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]>'
               b'<presence xmlns="urn:ietf:params:xml:ns:pidf">&a;</presence>')
    composed = presence_composer(ALICE, [
        Contribution("1", b"<presence"), Contribution("2", hostile),
        Contribution("3", dialog_info(("d", "confirmed"))),
        Contribution("4", pidf(("t1", "open")))])
    assert composed.contributors == ("4",)
    assert tuples(composed.body) == [("t1", "open")]
    assert composed.content_type == "application/pidf+xml"


def test_a_body_nested_too_deep_to_serialise_is_skipped():
    deep = pidf(("t1", "open"), extra="<x:a xmlns:x='urn:x'>" * 5000 + "</x:a>" * 5000)
    composed = presence_composer(ALICE, [Contribution("1", deep),
                                         Contribution("2", pidf(("t2", "open")))])
    assert composed.contributors == ("2",) and tuples(composed.body) == [("t2", "open")]


# ---- dialog -----------------------------------------------------------------------------

def test_dialog_info_is_full_state_with_the_callers_version_and_every_dialog():
    document = compose_dialog_info(ALICE, [dialog_info(("d2", "early")),
                                           dialog_info(("d1", "confirmed"))], version=0)
    root = parse(document)
    assert root.tag == f"{D}dialog-info"
    assert (root.get("version"), root.get("state"), root.get("entity")) == ("0", "full", ALICE)
    assert [(d.get("id"), d.findtext(f"{D}state")) for d in root] == \
        [("d2", "early"), ("d1", "confirmed")]
    assert b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0"' in document
    later = parse(compose_dialog_info(ALICE, [dialog_info(("d1", "confirmed"))], version=5))
    assert later.get("version") == "5"


def test_dialog_info_with_nothing_live_and_duplicate_dialog_ids():
    empty = parse(compose_dialog_info(ALICE, [], version=3))
    assert list(empty) == [] and empty.get("state") == "full" and empty.get("version") == "3"
    both = parse(compose_dialog_info(ALICE, [dialog_info(("1", "early")),
                                             dialog_info(("1", "confirmed"))], version=1))
    ids = [d.get("id") for d in both]
    assert ids[0] == "1" and ids[1] != "1" and len(set(ids)) == 2
    with pytest.raises(ValueError):
        dialog_composer(ALICE, [], -1)


# ---- message-summary and the rest -------------------------------------------------------

def test_message_summary_and_other_packages_take_the_newest_body():
    summary = b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"
    assert compose_newest([summary, b"Messages-Waiting: no\r\n"]) == summary
    assert compose_newest([]) == b""
    composed = newest_composer(ALICE, [
        Contribution("a", summary, "application/simple-message-summary"),
        Contribution("b", b"old", "application/simple-message-summary")], 0)
    assert composed == Composition("application/simple-message-summary", summary, ("a",))
    assert newest_composer(ALICE, [], 0) == Composition(None, b"")


def test_each_built_in_package_points_at_its_composer():
    assert BUILT_IN["presence"].composer is presence_composer
    assert BUILT_IN["dialog"].composer is dialog_composer
    assert BUILT_IN["message-summary"].composer is newest_composer
