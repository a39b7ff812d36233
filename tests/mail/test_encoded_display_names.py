"""An encoded word is a display name's text, never an address (RFC 2047 §5): address lists are
split first and their names decoded after. Decoded first, « =?utf-8?q?dsi=40chu…?= <ssi@evil…> »
read as two addresses, the first of them not the author (outside tester: a signed mail opened a
case in another establishment's name and acknowledged it there; a declaration whose display
name decoded to our own address was dropped as a loop; ``parse`` routed by a display name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.mail.parse import parse_message
from mailgateway.store.models import OutboundMessage
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

BODY = ("Bonjour,\n\nNuméro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
        "Type d'incident : rançongiciel\nGravité : grave\nServeurs chiffrés depuis ce matin.\n")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _declaration(from_field: str, *, to: str = "ssi-ara@ars.test", n: int = 1) -> bytes:
    raw = casemail.message(sender=from_field, to=to, subject="Déclaration d'incident", body=BODY,
                           message_id=f"<encoded-{n}@chu.test>")
    return casemail.sign(raw, casemail.establishment_key())


def test_a_from_of_several_addresses_is_nobodys() -> None:
    pm = parse_message(b"From: victime@autre.test <dsi@chu.test>\r\nSender: s@chu.test\r\n\r\nx\r\n")
    assert pm.from_address() is None
    assert parse_message(b"Sender: s@chu.test\r\n\r\nx\r\n").from_address() == ("", "s@chu.test")


def test_addresses_are_split_before_display_names_are_decoded() -> None:
    pm = parse_message(b"From: =?utf-8?q?dsi=40chu-nantes.test?= <ssi@evil.test>\r\n"
                       b"To: =?utf-8?q?ssi-ara=40ars.test?= <ssi-pdl@ars.test>, b@c.test\r\n"
                       b"Reply-To: =?utf-8?q?victime=40autre.test?= <contact@evil.test>\r\n\r\nx\r\n")
    assert pm.from_address() == ("dsi@chu-nantes.test", "ssi@evil.test")
    assert pm.addresses("To") == [("ssi-ara@ars.test", "ssi-pdl@ars.test"), ("", "b@c.test")]
    assert pm.addresses("Reply-To") == [("victime@autre.test", "contact@evil.test")]


def test_a_display_name_is_decoded_whole_and_on_one_line() -> None:
    pm = parse_message(b"From: =?utf-8?q?Foo=2C_Bar?= <foo.bar@example.com>\r\n"
                       b"To: =?iso-8859-1?q?Andr=E9?=\r\n  =?utf-8?q?=0A_Pirard?= <pirard@example.com>\r\n\r\nx\r\n")
    assert pm.from_address() == ("Foo, Bar", "foo.bar@example.com")
    assert pm.addresses("To") == [("André Pirard", "pirard@example.com")]


def test_a_declaration_is_answered_at_its_authors_address_not_at_its_display_name(gw: Gateway) -> None:
    result = gw.feed(_declaration("=?utf-8?q?victime=40autre.test?= <dsi@chu.test>"))
    assert result.status == "processed" and result.case_ref, result
    assert gw.case(result.case_ref).declarant == "dsi@chu.test"
    with gw.app.factory() as s:
        acks = list(s.scalars(select(OutboundMessage.recipient).where(OutboundMessage.kind == "accuse_reception")))
    assert acks == ["dsi@chu.test"]


def test_a_display_name_that_decodes_to_our_own_address_is_no_loop(gw: Gateway) -> None:
    result = gw.feed(_declaration("=?utf-8?q?ssi-ara=40ars.test?= <dsi@chu.test>", n=2))
    assert result.status == "processed" and result.kind == "declaration" and result.case_ref, result


def test_the_region_is_read_from_the_address_not_from_the_display_name(gw: Gateway) -> None:
    result = gw.feed(_declaration("dsi@chu.test", to="=?utf-8?q?ssi-pdl=40ars.test?= <ssi-ara@ars.test>", n=3))
    assert result.case_ref is not None and result.case_ref.startswith("SSI-ARA-"), result


def test_a_from_of_two_addresses_names_nobody_to_answer(gw: Gateway) -> None:
    """« victime@autre.test <dsi@chu.test> »: two addresses to the stdlib, dsi@chu.test to a mail
    client; authentication names nobody, and a declaration's declarant is who authentication
    names (no acknowledgement sent). The reply path: tests/processing/test_relay_replies.py."""
    raw = casemail.message(sender="victime@autre.test <dsi@chu.test>", to="ssi-ara@ars.test",
                           subject="Déclaration d'incident", body=BODY, message_id="<two-authors@chu.test>")
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    assert gw.case(result.case_ref).declarant is None
    with gw.app.factory() as s:
        assert not list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "accuse_reception")))


@pytest.mark.parametrize(("from_field", "reply_to"), [
    ("victime@autre.test <dsi@chu.test>", "dsi@chu.test"),  # From of two addresses, Reply-To of one
    ("victime@autre.test <dsi@chu.test>", "victime@autre.test, dsi@chu.test"),
    ("ne-pas-repondre@portail.test", "victime@autre.test, dsi@chu.test"),  # a robot's From, Reply-To of two
])
def test_reply_to_names_nobody_beside_an_ambiguous_from_or_as_a_list(gw: Gateway, from_field: str,
                                                                     reply_to: str) -> None:
    """Outside tester: « From: victime@… <ssi@evil…> » plus a Reply-To was acknowledged at it."""
    raw = casemail.message(sender=from_field, to="ssi-ara@ars.test", subject="Déclaration d'incident",
                           body=BODY, message_id=f"<reply-to-{len(from_field)}-{len(reply_to)}@chu.test>")
    raw = raw.replace(b"\r\nTo: ", f"\r\nReply-To: {reply_to}\r\nTo: ".encode(), 1)
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    assert gw.case(result.case_ref).declarant is None
    with gw.app.factory() as s:
        assert not list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "accuse_reception")))


def test_a_single_reply_to_still_answers_a_robots_notification(gw: Gateway) -> None:
    raw = casemail.message(sender="ne-pas-repondre@portail.test", to="ssi-ara@ars.test",
                           subject="Déclaration d'incident", body=BODY, message_id="<robot-one@portail.test>")
    raw = raw.replace(b"\r\nTo: ", b"\r\nReply-To: dsi@chu.test\r\nTo: ", 1)
    result = gw.feed(raw)
    assert result.case_ref and gw.case(result.case_ref).declarant == "dsi@chu.test", result
