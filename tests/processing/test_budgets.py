"""Budgets (docs/guarantees.md): what unauthenticated mail can make the gateway send, and to whom.

- a global budget on automatic replies (every recipient together), one staff warning an hour;
- acknowledgements to an address nobody verified quote no text of the message;
- staff notifications capped per sender, the message still stored and attached to its case;
- the original is attached to staff notifications only up to a size;
- an unauthenticated reply never changes a case's status (closed stays closed);
- bulletin approvals only from staff of the bulletin's own region, in mail naming a regional mailbox.

Each test fails on the code before these budgets existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, CaseEvent, Contact, Establishment, InboundMessage
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, gateway_from, settings_data
from tests.support.db import at_head
from tests.support.dkim import GeneratedKey, rsa_key, zone

ARA_STAFF = ("agent@ars.test", "referent@ars.test")


def gateway(url: str, outbound: dict[str, Any] | None = None, **cases: Any) -> Iterator[Gateway]:
    data = settings_data(at_head(url), **cases)
    data["outbound"] = {"bounce_domain": "ars.test", **(outbound or {})}
    yield from gateway_from(data)


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from gateway(sqlite_url)


@contextmanager
def signed_by_outsiders(url: str, keys: list[GeneratedKey], **outbound: Any) -> Iterator[Gateway]:
    """A gateway with these outside domains' DKIM keys published and ``[outbound]`` caps."""
    data = settings_data(at_head(url))
    data["outbound"] = {"bounce_domain": "ars.test", **outbound}
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"],
                                             **{k: v for key in keys for k, v in zone(key).items()}}
    yield from gateway_from(data)


def events(gw: Gateway, type_: str) -> list[CaseEvent]:
    with gw.app.factory() as s:
        rows = list(s.scalars(select(CaseEvent).where(CaseEvent.type == type_).order_by(CaseEvent.id)))
        for r in rows:
            s.expunge(r)
        return rows


def all_text(raw: bytes) -> str:
    """Headers and every text part, decoded: what the recipient can read."""
    msg = casemail.parse(raw)
    parts = [str(msg.get("Subject", "")), str(msg.get("References", "")), str(msg.get("In-Reply-To", ""))]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            parts.append(str(part.get_content()))
    return "\n".join(parts)


# --- 1. global auto-reply budget -----------------------------------------------------------------


def test_automatic_replies_have_a_global_budget_and_staff_are_warned_once(sqlite_url: str) -> None:
    for gw in gateway(sqlite_url, outbound={"auto_reply_global_per_hour": 3}):
        # Forged declarations, each "from" another victim: the per-recipient caps never trigger.
        for n in range(1, 7):
            assert gw.feed(casemail.declaration(n, sender=f"victime{n}@autre.test")).status == "processed"
        assert len(gw.outbound("accuse_reception")) == 3
        refused = [e for e in events(gw, "envoi_refuse") if "budget global" in e.data["motif"]]
        assert len(refused) == 3  # each refusal on its case's timeline
        warnings = gw.outbound("avertissement_plafond")
        assert sorted(w.recipient for w in warnings) == sorted(ARA_STAFF)  # one per staff member, not per refusal
        assert "budget global" in casemail.text_of(warnings[0].raw)
        # An hour later the budget is available again (and staff may be warned again).
        gw.clock.advance(hours=1, minutes=1)
        gw.feed(casemail.declaration(7, sender="victime7@autre.test"))
        assert len(gw.outbound("accuse_reception")) == 4


def _directory_establishment(gw: Gateway) -> None:
    with transaction(gw.app.factory) as s:  # chu.test is an establishment of the directory
        s.add(Establishment(finess="690781810", name="CHU", category="CH", departement="69", region="ARA",
                            source="finess", updated_at=NOW))
        s.flush()
        s.add(Contact(finess="690781810", address="rssi@chu.test", role="rssi", status="active",
                      bounce_score=0.0, created_at=NOW, updated_at=NOW))


def test_a_flood_of_forged_declarations_does_not_take_a_known_declarants_acknowledgement(sqlite_url: str) -> None:
    """An outside tester's flood of unauthenticated declarations used up the global budget; a
    genuine declaration signed by an establishment of the directory then got no acknowledgement.
    Replies to an address that authenticated under a known domain are not the global budget's."""
    for gw in gateway(sqlite_url, outbound={"auto_reply_global_per_hour": 3}):
        _directory_establishment(gw)
        for n in range(1, 5):
            gw.feed(casemail.declaration(n, sender=f"victime{n}@autre.test"))
        assert len(gw.outbound("accuse_reception")) == 3  # the budget is spent
        signed = casemail.sign(casemail.declaration(10, sender="dsi@chu.test"), casemail.establishment_key())
        assert gw.feed(signed).status == "processed"
        assert [o.recipient for o in gw.outbound("accuse_reception")][-1] == "dsi@chu.test"
        # Still spent for everyone else.
        gw.feed(casemail.declaration(11, sender="victime11@autre.test"))
        assert len(gw.outbound("accuse_reception")) == 4


def test_a_known_declarant_gets_every_acknowledgement_in_an_hour_of_crisis(sqlite_url: str) -> None:
    """An RSSI's sixth declaration in an hour got no acknowledgement (``auto_replies_per_hour``).
    A domain of the directory answers for its mail: only the per-case cap applies to it. A
    signature of a domain nobody knows still meets the per-recipient caps."""
    outsider = rsa_key("rsa", "intrus-signe.test")
    with signed_by_outsiders(sqlite_url, [outsider], auto_replies_per_hour=2) as gw:
        _directory_establishment(gw)
        for n in range(1, 5):
            signed = casemail.sign(casemail.declaration(n, sender="dsi@chu.test"), casemail.establishment_key())
            assert gw.feed(signed).status == "processed"
        assert [o.recipient for o in gw.outbound("accuse_reception")] == ["dsi@chu.test"] * 4
        for n in range(5, 9):
            raw = casemail.declaration(n, sender="flood@intrus-signe.test")
            assert gw.feed(casemail.sign(raw, outsider)).status == "processed"
        assert [o.recipient for o in gw.outbound("accuse_reception")].count("flood@intrus-signe.test") == 2


# --- 2. nothing of an unauthenticated message echoed to an unverified address ----------------------

HOSTILE_DECLARATION = """\
From: Escroc <dsi@chu.test>
Reply-To: victime@autre.test
To: ssi-ara@ars.test
Subject: =?utf-8?q?D=C3=A9claration_d=27incident_:_VOTRE_COMPTE_EXPIRE_http://phish.test/a?=
Message-ID: <hostile-1@chu.test>
References: <appel-a-l-aide-http://phish.test/r@x>
Date: Fri, 27 Nov 2026 10:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Numéro FINESS : 690781810
Nom de la structure : Banque Sécurisée, rendez-vous sur http://phish.test/b
Type d'incident : rançongiciel
Courriel du déclarant : victime@autre.test

Réactivez votre compte sur http://phish.test/c avant ce soir.
"""


def test_acknowledgement_to_an_unverified_address_quotes_no_text_of_the_message(gw: Gateway) -> None:
    result = gw.feed(HOSTILE_DECLARATION.replace("\n", "\r\n").encode())
    assert result.status == "processed" and result.case_ref
    (ack,) = gw.outbound("accuse_reception")
    # A person's mail names no other declarant by label (only a no-reply robot's does): the
    # unauthenticated From is answered, the victim named in the body is not written to.
    assert ack.recipient == "dsi@chu.test"
    seen = all_text(ack.raw)
    for echo in ("phish.test", "EXPIRE", "Banque", "Réactivez", "Escroc"):
        assert echo not in seen, echo
    # The safe summary: reference, date received, the incident type as its enumeration label.
    assert result.case_ref in seen and "27/11/2026" in seen and "rançongiciel" in seen


def test_an_authenticated_declarant_still_gets_the_full_acknowledgement(gw: Gateway) -> None:
    raw = casemail.sign(casemail.declaration(1), casemail.establishment_key())
    assert gw.feed(raw).status == "processed"
    (ack,) = gw.outbound("accuse_reception")
    text = casemail.text_of(ack.raw)
    assert "Centre hospitalier" in text and "Déclaration d'incident 1" in text


def test_bulletin_refusals_to_unauthenticated_senders_echo_nothing_and_reach_no_outsider(gw: Gateway) -> None:
    request = casemail.staff_mail("#cible categorie=LBM\nTexte.\n", subject="#bulletin Essai", sender="agent@ars.test")
    with transaction(gw.app.factory) as s:
        fill_directory(s, NOW, 2)
    assert gw.feed(request).status == "processed"
    preview = gw.last("bulletin_apercu", "agent@ars.test")
    ref = gw.declare()  # any case reference makes the mail a reply
    # Anyone threads into the preview, "from" a victim, with a hostile subject: no signed mail to the victim.
    forged = casemail.message(sender="victime@autre.test", to="ssi-ara@ars.test",
                              subject=f"[{ref}] Gagnez un iPhone http://phish.test/x", body="#diffuser\n",
                              in_reply_to=preview.message_id)
    gw.feed(forged)
    assert gw.outbound(to="victime@autre.test") == []
    # A staff-looking but unauthenticated sender gets a bare refusal: no subject, no draft.
    gw.feed(casemail.message(sender="agent@ars.test", to="ssi-ara@ars.test",
                             subject="Gagnez un iPhone http://phish.test/x", body="#diffuser\n",
                             in_reply_to=preview.message_id))
    refusal = gw.last("bulletin_apercu", "agent@ars.test")
    seen = all_text(refusal.raw)
    assert "non authentifié" in seen and "phish.test" not in seen and "Texte." not in seen


# --- 3. staff notifications capped per sender --------------------------------------------------------


def test_staff_notifications_are_capped_per_sender(sqlite_url: str) -> None:
    for gw in gateway(sqlite_url, outbound={"staff_notifications_per_sender_per_hour": 2}):
        ref = gw.declare()
        before = len(gw.outbound("notification_reponse"))
        for n in range(5):
            raw = casemail.message(sender="intrus@autre.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] {n}",
                                   body=f"Pièce jointe numéro {n}.\n")
            assert gw.feed(raw).status == "processed"
        # Two messages notified (to each staff member of the region), three held back.
        assert len(gw.outbound("notification_reponse")) - before == 2 * len(ARA_STAFF)
        assert len(events(gw, "notification_limitee")) == 3
        # Every message is still stored and attached to its case.
        with gw.app.factory() as s:
            attached = s.scalar(select(func.count()).select_from(InboundMessage)
                                .where(InboundMessage.case_id.is_not(None)))
        assert attached == 6
        # One summary notice per staff member for that sender and hour.
        warnings = gw.outbound("avertissement_plafond")
        assert sorted(w.recipient for w in warnings) == sorted(ARA_STAFF)
        assert "intrus@autre.test" in casemail.text_of(warnings[0].raw)
        # Another sender is not affected.
        gw.feed(casemail.message(sender="autre@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                                 body="Bonjour.\n"))
        assert len(gw.outbound("notification_reponse")) - before == 3 * len(ARA_STAFF)


def test_an_authenticated_sender_is_never_held_back_by_the_per_sender_cap(sqlite_url: str) -> None:
    """A portal or an establishment that signs its mail answers for it: in a wave of declarations
    from one address, staff must be told of every case."""
    for gw in gateway(sqlite_url, outbound={"staff_notifications_per_sender_per_hour": 2}):
        _directory_establishment(gw)
        ref = gw.declare()
        before = len(gw.outbound("notification_reponse"))
        for n in range(4):
            raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] {n}",
                                   body=f"Complément numéro {n}.\n")
            assert gw.feed(casemail.sign(raw, casemail.establishment_key())).status == "processed"
        assert len(gw.outbound("notification_reponse")) - before == 4 * len(ARA_STAFF)
        assert events(gw, "notification_limitee") == []


def test_a_signature_of_an_unknown_domain_does_not_lift_the_per_sender_cap(sqlite_url: str) -> None:
    """Anyone can register a domain and sign with it: a genuine signature from a domain the agency
    has never dealt with (not its own, not ACSS's, no staff, no directory contact) is capped like
    an anonymous sender. The same sender in the directory is exempt (test above)."""
    outsider = rsa_key("rsa", "intrus-signe.test")
    with signed_by_outsiders(sqlite_url, [outsider], staff_notifications_per_sender_per_hour=2) as gw:
        ref = gw.declare()
        before = len(gw.outbound("notification_reponse"))
        for n in range(5):
            raw = casemail.message(sender="flood@intrus-signe.test", to="ssi-ara@ars.test",
                                   subject=f"RE: [{ref}] {n}", body=f"Message {n}.\n")
            result = gw.feed(casemail.sign(raw, outsider))
            assert result.status == "processed"
        assert len(gw.outbound("notification_reponse")) - before == 2 * len(ARA_STAFF)
        assert len(events(gw, "notification_limitee")) == 3


# --- 6. the original attached only up to a size ------------------------------------------------------


def test_a_large_original_is_not_copied_into_every_staff_notification(sqlite_url: str) -> None:
    for gw in gateway(sqlite_url, outbound={"staff_attachment_max_bytes": 50_000}):
        padding = "Journal des événements : " + "x" * 70 + "\n"
        raw = casemail.declaration(1)[:-2] + (padding * 1500).replace("\n", "\r\n").encode()
        assert len(raw) > 100_000
        ref = gw.declare(2)  # a small one: attached as before
        assert gw.feed(raw).status == "processed"
        for row in gw.outbound("notification_equipe"):
            text = casemail.text_of(row.raw)
            if ref in casemail.parse(row.raw)["Subject"]:
                assert len(row.raw) > 1000 and "Le message d'origine est joint." in text
            else:
                assert len(row.raw) < 20_000  # not the 100 KB original
                assert "mailgateway cases original SSI-ARA-" in text


# --- 4. unauthenticated mail never changes a case's status --------------------------------------------


def close(gw: Gateway) -> str:
    ref = gw.declare()
    gw.command(ref, "#qualifier significatif\n#clore\n")
    assert gw.case(ref).status == "CLOS"
    return ref


def test_an_unauthenticated_reply_does_not_reopen_a_closed_case(gw: Gateway) -> None:
    ref = close(gw)
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                           body="Le problème est revenu.\n")
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref == ref
    assert gw.case(ref).status == "CLOS"
    assert [e.data["motif"] for e in gw.events(ref) if e.type == "reouverture_refusee"] == ["réponse non authentifiée"]
    notified = gw.last("notification_reponse")  # staff still see the reply
    assert "reste" in casemail.text_of(notified.raw) and "rouvert" not in str(casemail.parse(notified.raw)["Subject"])


def test_a_statut_query_from_an_outsider_does_not_reopen_a_closed_case(gw: Gateway) -> None:
    ref = close(gw)
    gw.feed(casemail.message(sender="intrus@autre.test", to="ssi-ara@ars.test", subject=f"#statut {ref}",
                             body="\n"))
    assert gw.case(ref).status == "CLOS"


def test_an_authenticated_reply_from_another_domain_does_not_reopen(gw: Gateway) -> None:
    ref = close(gw)
    # Signed, but by the agency's domain posing as a correspondent, not by the establishment's.
    gw.feed(casemail.staff_mail("Rouvrez.\n", sender="quelquun@ars.test", subject=f"RE: [{ref}]"))
    assert gw.case(ref).status == "CLOS"


def test_unauthenticated_reply_opens_no_linked_case_either(sqlite_url: str) -> None:
    for gw in gateway(sqlite_url, reply_to_closed="link"):
        ref = close(gw)
        result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                                          body="Encore.\n"))
        assert result.case_ref == ref and gw.case(ref).status == "CLOS"
        assert len(gw.outbound("accuse_reception")) == 1


# --- 5. approvals checked against the bulletin's own region -------------------------------------------


def _ara_preview(gw: Gateway) -> str:
    with transaction(gw.app.factory) as s:
        fill_directory(s, NOW, 2)
    gw.feed(casemail.staff_mail("#cible categorie=LBM\nTexte ARA.\n", subject="#bulletin ARA"))
    return gw.last("bulletin_apercu", "agent@ars.test").message_id


def test_staff_of_another_region_cannot_approve_a_bulletin(gw: Gateway) -> None:
    preview = _ara_preview(gw)
    # PDL staff, authenticated, writing to their own mailbox, threaded into the ARA preview.
    gw.feed(casemail.staff_mail("#diffuser\n", sender="pdl@ars.test", to="ssi-pdl@ars.test",
                                subject="RE: Aperçu", in_reply_to=preview))
    assert not re.search(r"#confirmer [0-9a-f]{12}", "".join(casemail.text_of(r.raw) for r in gw.outbound(
        "bulletin_apercu", "pdl@ars.test")))
    with gw.app.factory() as s:
        assert s.scalar(select(Bulletin.status)) == "draft"
    assert "région ARA" in casemail.text_of(gw.last("bulletin_apercu", "pdl@ars.test").raw)


def test_a_mail_naming_no_regional_mailbox_authorises_nobody(gw: Gateway) -> None:
    with transaction(gw.app.factory) as s:
        fill_directory(s, NOW, 2, departement="44", region="PDL")
    # ARA staff, to a look-alike of the PDL mailbox: routing guesses PDL from the local part, and
    # the analysis, which saw no regional mailbox, used to accept staff of any region.
    gw.feed(casemail.staff_mail("#cible categorie=LBM\nTexte.\n", sender="agent@ars.test",
                                to="ssi-pdl@ars-sante.test", subject="#bulletin Sans boîte"))
    with gw.app.factory() as s:
        assert s.scalar(select(func.count()).select_from(Bulletin)) == 0


def test_rotating_addresses_does_not_escape_the_cap(sqlite_url: str) -> None:
    """Outside attack: 22 declarations signed by one unknown domain from rot0@…rot21@ got 22
    notifications; the signing domain is one sender. Unauthenticated mail is also capped all
    together, since a From costs nothing."""
    outsider = rsa_key("rsa", "intrus-signe.test")
    with signed_by_outsiders(sqlite_url, [outsider], staff_notifications_per_sender_per_hour=2,
                             staff_notifications_unauthenticated_per_hour=3) as gw:
        for n in range(5):
            gw.feed(casemail.sign(casemail.declaration(100 + n, sender=f"rot{n}@intrus-signe.test"), outsider))
        assert len(gw.outbound("notification_equipe")) == 2 * len(ARA_STAFF)
        for n in range(5):
            gw.feed(casemail.declaration(200 + n, sender=f"anon{n}@ailleurs-{n}.test"))
        assert len(gw.outbound("notification_equipe")) == (2 + 3) * len(ARA_STAFF)
        assert len(events(gw, "notification_limitee")) == 3 + 2
        warnings = [r for r in gw.outbound() if "non authentifiés" in casemail.text_of(r.raw)]
        assert warnings  # staff are told once that the pool is exhausted


def test_rotating_subdomains_does_not_escape_the_cap(sqlite_url: str) -> None:
    """Outside attack: with the per-domain cap used up at intrus-signe.test, declarations signed
    d=s1.intrus-signe.test, d=s2.… (one wildcard DNS record publishes them all) each notified
    every staff member. The budget is the organisational domain's (its label under the public
    suffix); the warning names it."""
    keys = [rsa_key("rsa", domain) for domain in ("intrus-signe.test", "s1.intrus-signe.test",
                                                  "s2.intrus-signe.test")]
    with signed_by_outsiders(sqlite_url, keys, staff_notifications_per_sender_per_hour=2) as gw:
        for n, key in enumerate(keys * 2):
            result = gw.feed(casemail.sign(casemail.declaration(300 + n, sender=f"x{n}@{key.domain}"), key))
            assert result.status == "processed"
            assert gw.case(result.case_ref).declarant == f"x{n}@{key.domain}"
        assert len(gw.outbound("notification_equipe")) == 2 * len(ARA_STAFF)
        assert len(events(gw, "notification_limitee")) == 4
        warnings = [casemail.text_of(r.raw) for r in gw.outbound("avertissement_plafond")]
        assert warnings and all("domaine signataire intrus-signe.test" in w for w in warnings)


def test_a_reopened_case_reaches_staff_even_over_the_cap(sqlite_url: str) -> None:
    """Found by an outside tester: with its domain over the per-sender cap, an establishment's
    reply reopened its closed case, staff got nothing, and the declarant read « l'équipe SSI en
    est informée ». A reopening always reaches staff: a case reopens once per closure, and only
    staff close cases, so this is no flood."""
    outsider = rsa_key("rsa", "clinique-inconnue.test")
    with signed_by_outsiders(sqlite_url, [outsider], staff_notifications_per_sender_per_hour=2) as gw:
        sender = "rssi@clinique-inconnue.test"
        ref = gw.feed(casemail.sign(casemail.declaration(1, sender=sender), outsider)).case_ref
        assert ref
        for n in (2, 3):  # the domain's hourly notices are used up
            gw.feed(casemail.sign(casemail.declaration(n, sender=sender), outsider))
        assert events(gw, "notification_limitee")
        gw.command(ref, "#clore Comptes réinitialisés\n")
        reply = casemail.message(sender=sender, to="ssi-ara@ars.test", subject=f"RE: [{ref}] Clôture",
                                 body="L'incident reprend : nouveaux fichiers chiffrés ce soir.\n",
                                 message_id="<reprise@clinique-inconnue.test>")
        assert gw.feed(casemail.sign(reply, outsider)).status == "processed"
        assert gw.case(ref).status != "CLOS"
        told = [casemail.text_of(r.raw) for r in gw.outbound("notification_reponse")]
        assert told and all("nouveaux fichiers chiffrés" in t for t in told)
        [notice] = gw.outbound("suivi_declarant", sender)
        assert "l'équipe SSI en est informée" in casemail.text_of(notice.raw)
