"""A wave of declarations is told to staff in digests (processing/wave.py, issue 19).

Once ``[processing] staff_notice_digest_from`` staff notifications wait behind a backlog, the new
declarations among them reach staff as « Afflux de déclarations » mails of up to 100 cases, each
case's warnings kept, each case's timeline saying which mail told staff; every other notice (an
alert's, a reply's) keeps its own mail; below the threshold nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import cast

import pytest
from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.commands import digest_reply
from mailgateway.dispatch.contexts import case_context
from mailgateway.dispatch.render import Renderer, _width
from mailgateway.errors import ConfigError
from mailgateway.intake.accept import accept_in
from mailgateway.mail.refs import find_ref
from mailgateway.processing import quarantine, runner, wave
from mailgateway.settings import parse_settings
from mailgateway.store.engine import reading, transaction
from mailgateway.store.models import Case, CaseEvent, OutboundMessage
from tests.processing.test_batches import NOW, accept, settings_for
from tests.processing.test_later import declaration, outbox, stream, waiting
from tests.support import casemail
from tests.support.casegateway import Gateway, gateway_from, settings_data
from tests.support.db import at_head
from tests.support.messages import make_alert

WAVE = 10  # staff_notice_digest_from in these tests


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    application = build_app(settings_for(at_head(db_url), staff_notice_digest_from=WAVE), clock=FixedClock(NOW))
    yield application
    application.close()


def digests(app: App) -> list[EmailMessage]:
    with reading(app.factory) as s:
        raws = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == wave.KIND)
                         .order_by(OutboundMessage.id)).all()
    return [cast(EmailMessage, message_from_bytes(raw, policy=policy.default)) for raw in raws]


def text(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return cast(str, part.get_content())


def references(app: App) -> list[str]:
    with reading(app.factory) as s:
        return list(s.scalars(select(Case.reference).order_by(Case.id)))


def test_a_backlog_past_the_threshold_is_told_in_one_digest(app: App) -> None:
    n = runner.BATCH_SIZE + 5  # a backlog: notices deferred, WAVE or more of them
    for i in range(n):
        accept(app, declaration(i))
    results = app.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * n
    kinds = [kind for _, kind, _ in outbox(app)]
    assert kinds.count("accuse_reception") == n  # every declarant acknowledged, as before
    assert "notification_equipe" not in kinds  # no mail per case
    assert kinds.count(wave.KIND) == 1 and waiting(app) == 0
    (mail,) = digests(app)
    assert mail["To"] == "agent@ars.test"
    refs = references(app)
    assert mail["Subject"] == (f"[SSI ARA] Afflux de déclarations : {n} nouveaux dossiers n° 0001 à 00{n} "
                               "(le 27/11/2026 à 10:00)")
    assert find_ref(mail["Subject"]) is None  # a reply's subject names no case (mail/refs.py)
    body = text(mail)
    for reference in refs:  # every case, in order, its reference to act on it
        assert f". {reference} — " in body
    assert f"  - expéditeurs non authentifiés : {n} sur {n} — n° 0001, 0002, " in body  # what to triage, counted
    assert "  - hors région" not in body  # none: not said
    assert max(len(line) for line in body.splitlines()) <= 80  # no mail reader re-wraps a line
    assert not any(line.startswith("#") for line in body.splitlines())  # nor reads our text as a command
    assert body.index(references(app)[0]) < body.index(references(app)[-1])
    assert "FINESS 690781810" in body and "Type : rançongiciel" in body
    assert "NON authentifié" in body  # the declarations are unsigned: said per case
    # The eleventh declaration names the first one's FINESS: the duplicate hint is kept.
    assert "DOUBLON POSSIBLE du dossier ouvert" in body
    assert "#original RÉFÉRENCE" in " ".join(body.split()) and "message-original.eml" not in mail.as_string()
    with reading(app.factory) as s:  # each case's timeline names the digest that told staff
        told = s.scalars(select(CaseEvent).where(CaseEvent.type == "mail_sortant")).all()
        assert sorted(e.data["type"] for e in told) == ["accuse_reception"] * n + [wave.KIND] * n
        assert {e.data["objet"] for e in told if e.data["type"] == wave.KIND} == {mail["Subject"]}


def test_below_the_threshold_each_case_has_its_notification(db_url: str) -> None:
    app = build_app(settings_for(at_head(db_url), staff_notice_digest_from=100), clock=FixedClock(NOW))
    try:
        n = runner.BATCH_SIZE + 5
        for i in range(n):
            accept(app, declaration(i))
        app.processor.process_pending()
        kinds = [kind for _, kind, _ in outbox(app)]
        assert kinds.count("notification_equipe") == n and wave.KIND not in kinds
    finally:
        app.close()


def test_zero_turns_digests_off(db_url: str) -> None:
    app = build_app(settings_for(at_head(db_url), staff_notice_digest_from=0), clock=FixedClock(NOW))
    try:
        for i in range(runner.BATCH_SIZE + 5):
            accept(app, declaration(i))
        app.processor.process_pending()
        assert wave.KIND not in [kind for _, kind, _ in outbox(app)]
    finally:
        app.close()


def test_a_digest_lists_at_most_its_share_of_cases(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wave, "DIGEST_CASES", 12)
    n = runner.BATCH_SIZE + 5
    for i in range(n):
        accept(app, declaration(i))
    app.processor.process_pending()
    mails = digests(app)
    assert [m["Subject"].split(" : ")[1].split(" ")[0] for m in mails] == ["12", "12", str(n - 24)]
    assert [m["Subject"].split(" n° ")[1].split(" (")[0] for m in mails] == [
        "0001 à 0012", "0013 à 0024", f"0025 à 00{n}"]
    listed = [line.split(" ")[2] for m in mails for line in text(m).splitlines() if line.startswith("== ")]
    assert listed == references(app)  # every case once, oldest first


def test_a_wave_during_a_stream_is_told_before_the_stream_ends(app: App) -> None:
    rows, last_ack = stream(app)  # the bound reached at once: notices told between batches
    assert any(i < last_ack for i, kind, _ in rows if kind == wave.KIND)
    told = [line for m in digests(app) for line in text(m).splitlines() if line.startswith("== ")]
    assert len(told) == 3 * runner.BATCH_SIZE and waiting(app) == 0


def test_a_digest_that_fails_to_compose_is_sent_as_notifications(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("template broken")

    monkeypatch.setattr(wave, "send_digests", broken)
    n = runner.BATCH_SIZE + 5
    for i in range(n):
        accept(app, declaration(i))
    app.processor.process_pending()
    kinds = [kind for _, kind, _ in outbox(app)]
    assert kinds.count("notification_equipe") == n and waiting(app) == 0  # none lost


def test_only_new_declarations_to_the_whole_staff_are_digested() -> None:
    notice = {"template": "staff_notification", "kind": "notification_equipe", "recipients": None,
              "context": {"alert": None, "case": {"kind": "incident"}}}
    assert wave.digestible(notice)
    assert not wave.digestible({**notice, "context": {"alert": {"authentic": False}, "case": {"kind": "alert"}}})
    assert not wave.digestible({**notice, "context": {"alert": None, "case": {"kind": "alert"}}})
    assert not wave.digestible({**notice, "kind": "notification_reponse", "template": "reponse_recue"})
    assert not wave.digestible({**notice, "recipients": ["agent@ars.test"]})


def test_the_period_is_said_in_french() -> None:
    assert wave.period_fr(["08/12/2026 à 10:03", "08/12/2026 à 10:01"]) == "le 08/12/2026 entre 10:01 et 10:03"
    assert wave.period_fr(["08/12/2026 à 10:01"] * 2) == "le 08/12/2026 à 10:01"
    assert (wave.period_fr(["01/01/2027 à 00:01", "31/12/2026 à 23:59"])
            == "entre le 31/12/2026 à 23:59 et le 01/01/2027 à 00:01")


def test_a_negative_threshold_is_refused(db_url: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(at_head(db_url), staff_notice_digest_from=-1)
    assert [key for key, _ in err.value.problems] == ["processing.staff_notice_digest_from"]


def test_text_from_mail_cannot_write_a_row_of_its_own() -> None:
    # A structure, a summary or a declarant carrying line breaks (CR, LF, U+2028, NEL) would put a
    # forged « == 2. SSI-… » row, with its own FINESS and « authentifié », among those staff act on.
    forged = "CH X\r\n== 2. SSI-ARA-2026-0099 — faux\u2028   Déclarant : chef@ars.test (authentifié)\x85"
    case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="incident", status="NOUVEAU", title=forged,
                establishment=forged)
    context = {"case": case_context(case), "received_at_fr": "27/11/2026 à 10:00", "declarant": forged,
               "declaration": {"structure": forged, "summary": forged, "forwarded_author": forged},
               "sender": {"address": forged, "authenticated": False}, "ack_refused": forged,
               "unsigned_reply_to": forged}
    settings = settings_for("sqlite://")
    mail = Renderer().render(wave.TEMPLATE, wave.digest_context(
        settings, "ARA", [wave.Item(case, context, [forged], 1), wave.Item(case, context, [], 2)], composed=NOW))
    lines = mail.text.splitlines()
    assert [line for line in lines if line.startswith("== ")] == [
        "== 1. SSI-ARA-2026-0001 — CH X == 2. SSI-ARA-2026-0099 — faux Déclarant :",
        "== 2. SSI-ARA-2026-0001 — CH X == 2. SSI-ARA-2026-0099 — faux Déclarant :"]
    assert not any(line.startswith("   Déclarant : chef@") for line in lines)


@pytest.mark.parametrize("blank", ["\u2800", "\u3164", "\u200b", "\u00a0", "\u3000", "\ufeff", "\U000e0020", "\x0b"])
def test_a_padded_field_cannot_start_a_line_when_a_reader_wraps(blank: str) -> None:
    # An outside tester padded a structure name with braille blanks (U+2800, not white space to
    # str.split) so that a reader wrapping at 110 columns started a line with a forged row. Every
    # line the digest writes fits 80 columns and a continuation is indented: no reader re-wraps.
    forged = "CH" + blank * 70 + "== 2. SSI-ARA-2026-0270 — Hospices Civils de Lyon" + blank * 40 + "Déclarant : x"
    case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="incident", status="NOUVEAU", title="t")
    context = {"case": case_context(case), "received_at_fr": "27/11/2026 à 10:00", "declarant": forged,
               "declaration": {"structure": forged, "summary": forged}, "sender": {"address": "a@b.test"}}
    mail = Renderer().render(wave.TEMPLATE, wave.digest_context(
        settings_for("sqlite://"), "ARA", [wave.Item(case, context, [forged] * 5, 1)] * 2, composed=NOW))
    lines = mail.text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert [line for line in lines if line.startswith("== ")] == ["== 1. SSI-ARA-2026-0001 — t",
                                                                  "== 2. SSI-ARA-2026-0001 — t"]
    assert not any(line.startswith(("Déclarant", "== 2. SSI-ARA-2026-0270")) for line in lines)
    assert blank * 2 not in mail.text  # (the template's own guillemets hold a no-break space)


def two_regions(url: str) -> App:
    settings = parse_settings({
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"},
                    {"code": "PDL", "name": "Pays de la Loire", "address": "ssi-pdl@ars.test"}],
        "staff": [{"address": "agent@ars.test", "region": "ARA"}, {"address": "agent@ars-pdl.test", "region": "PDL"}],
        "processing": {"staff_notice_digest_from": WAVE},
    })
    return build_app(settings, clock=FixedClock(NOW))


def test_a_wave_in_one_region_leaves_another_regions_notifications_alone(db_url: str) -> None:
    # An outside tester: 80 declarations to PDL, and ARA's one genuine declaration reached ARA's
    # staff as a one-case « Afflux », without its reference in the subject nor the original.
    app = two_regions(at_head(db_url))
    try:
        n = runner.BATCH_SIZE + 5
        for i in range(n):
            with transaction(app.factory) as s:
                accept_in(s, declaration(i), source="cli", now=NOW, region="PDL")
        for i in (1000, 1001):
            with transaction(app.factory) as s:
                accept_in(s, declaration(i), source="cli", now=NOW, region="ARA")
        app.processor.process_pending()
        with reading(app.factory) as s:
            sent = s.execute(select(OutboundMessage.kind, OutboundMessage.recipient)
                             .where(OutboundMessage.kind != "accuse_reception")).all()
        assert sorted(sent) == [("notification_afflux", "agent@ars-pdl.test"),
                                ("notification_equipe", "agent@ars.test"), ("notification_equipe", "agent@ars.test")]
    finally:
        app.close()


def test_a_digests_lone_case_keeps_its_own_notification(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wave, "DIGEST_CASES", runner.BATCH_SIZE + 4)
    n = runner.BATCH_SIZE + 5  # a digest of all but the last, which would be a digest alone
    for i in range(n):
        accept(app, declaration(i))
    app.processor.process_pending()
    kinds = [kind for _, kind, _ in outbox(app)]
    assert kinds.count(wave.KIND) == 1 and kinds.count("notification_equipe") == 1
    with reading(app.factory) as s:
        notified = s.scalar(select(Case.reference).join(OutboundMessage, OutboundMessage.case_id == Case.id)
                            .where(OutboundMessage.kind == "notification_equipe"))
    assert notified == references(app)[-1]
    assert f". {notified} — " not in text(digests(app)[0])


@pytest.fixture
def gw(db_url: str) -> Iterator[Gateway]:
    yield from gateway_from({**settings_data(at_head(db_url)), "processing": {"staff_notice_digest_from": WAVE}})


def wave_of(gw: Gateway) -> OutboundMessage:
    for n in range(runner.BATCH_SIZE + 5):
        with transaction(gw.app.factory) as s:
            accept_in(s, casemail.declaration(n), source="cli", now=NOW)
    gw.app.processor.process_pending()
    return gw.last(wave.KIND, "agent@ars.test")


def quoting(digest: OutboundMessage, new: str) -> str:
    quoted = "\n".join(f"> {line}" for line in casemail.text_of(digest.raw).splitlines())
    return f"{new}\n\nLe 27/11/2026 à 10:00, Cellule SSI a écrit :\n{quoted}\n"


def count_cases(gw: Gateway) -> int:
    with reading(gw.app.factory) as s:
        return len(s.scalars(select(Case.id)).all())


@pytest.mark.parametrize("new", [
    "Je prends les dossiers de Grenoble et d'Annecy.",
    "SSI-ARA-2026-0008 #fusionner SSI-ARA-2026-0007\nSSI-ARA-2026-0009 #assigner moi",
])
def test_an_agents_reply_to_a_digest_opens_nothing_and_says_how_to_act(gw: Gateway, new: str) -> None:
    # An outside tester's Thunderbird reply quoting the digest opened a case with the agent as its
    # declarant (acknowledged, notified to the team); the merges it asked for ran nowhere, silently.
    digest = wave_of(gw)
    before = count_cases(gw)
    subject = casemail.parse(digest.raw)["Subject"]  # as the mail client answers it
    mail = casemail.staff_mail(quoting(digest, new), in_reply_to=digest.message_id, subject=f"Re: {subject}")
    result = gw.feed(mail)
    assert (result.status, result.case_ref) == ("processed", None)
    assert count_cases(gw) == before
    assert not gw.outbound("accuse_reception", "agent@ars.test")
    receipt = gw.receipt_text()
    assert "répond à un récapitulatif d'afflux" in receipt and "aucun dossier n'a été ouvert ni modifié" in receipt
    for line in new.splitlines():
        assert (f"  {line}" in receipt) == ("#" in line)  # the command lines it did not apply


def test_a_reply_to_a_digest_naming_its_case_acts_on_that_case(gw: Gateway) -> None:
    digest = wave_of(gw)
    ref = gw.outbound("accuse_reception")[2].raw.split(b"[", 1)[1].split(b"]", 1)[0].decode()
    result = gw.feed(casemail.staff_mail("#assigner moi", in_reply_to=digest.message_id,
                                         subject=f"Re: [{ref}] Afflux de déclarations"))
    assert result.case_ref == ref and gw.case(ref).assignee == "agent@ars.test"


def test_an_unsigned_agents_reply_to_a_digest_opens_nothing_and_is_quarantined(gw: Gateway) -> None:
    # An outside tester: an agent's reply that arrived unsigned, quoting the digest, opened a case
    # with the agent as its declarant. Nothing proves who wrote it: quarantined, no receipt sent;
    # released by staff, it is processed as it is.
    digest = wave_of(gw)
    before = count_cases(gw)
    subject = casemail.parse(digest.raw)["Subject"]
    result = gw.feed(casemail.staff_mail(quoting(digest, "Je prends Grenoble.\n#assigner moi"), signed=False,
                                         in_reply_to=digest.message_id, subject=f"Re: {subject}"))
    assert (result.status, result.reason) == ("quarantined", digest_reply.UNPROVEN)
    assert count_cases(gw) == before
    assert not gw.outbound("accuse_reception", "agent@ars.test") and not gw.outbound("recu_commandes", "agent@ars.test")
    with transaction(gw.app.factory) as s:
        quarantine.release(s, result.inbound_id, actor="agent@ars.test", now=NOW)
    assert gw.app.processor.process(result.inbound_id).reason != digest_reply.UNPROVEN  # not quarantined again


def test_mail_of_others_naming_a_digest_goes_on_as_usual(gw: Gateway) -> None:
    # An agent's reply-all puts the ACSS or a hospital in copy: what they send back names the
    # digest in its References. A signed alert and a hospital's follow-up were quarantined, and
    # quarantined again when released (an outside tester).
    digest = wave_of(gw)
    ref = gw.outbound("accuse_reception")[2].raw.split(b"[", 1)[1].split(b"]", 1)[0].decode()
    refs = f"References: {digest.message_id}\r\n".encode()
    alert = gw.feed(casemail.sign(refs + make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test",
                                                    tlp="TLP:CLEAR"), casemail.acss_key()))
    assert (alert.status, alert.kind) == ("processed", "alert") and alert.case_ref
    follow_up = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Complément",
                                 body=f"Concernant le dossier {ref} : 40 serveurs chiffrés.",
                                 in_reply_to=digest.message_id)
    result = gw.feed(casemail.sign(follow_up, casemail.establishment_key()))
    assert (result.status, result.case_ref) == ("processed", ref)
    declared = gw.feed(casemail.message(sender="rssi@autre-chu.test", to="ssi-ara@ars.test", subject="Re: Afflux",
                                        body=quoting(digest, "Voici notre déclaration."),
                                        in_reply_to=digest.message_id))
    # The digest it quotes reads as a declaration: quarantined, releasable.
    assert (declared.kind, declared.status, declared.reason) == ("declaration", "quarantined", digest_reply.QUOTED)


def test_a_digests_message_id_reused_by_an_outsider_takes_no_reply(gw: Gateway) -> None:
    # An outsider declared with a digest's Message-ID as his own: staff replies to the digest were
    # filed on his case, and an agent's « #repondre » was mailed to him (an outside tester).
    digest = wave_of(gw)
    forged = casemail.message(sender="x@evil.test", to="ssi-ara@ars.test", subject="Incident",
                              body=casemail.text_of(casemail.declaration(99)), message_id=digest.message_id)
    gw.feed(forged)
    subject = casemail.parse(digest.raw)["Subject"]
    result = gw.feed(casemail.staff_mail(quoting(digest, "#repondre Coupez le VPN."), in_reply_to=digest.message_id,
                                         subject=f"Re: {subject}"))
    assert (result.case_ref, result.reason) == (None, digest_reply.REASON)
    assert not gw.outbound("reponse", "x@evil.test")


def test_original_in_a_reply_to_a_digest_is_sent(gw: Gateway) -> None:
    # The digest offers « #original RÉFÉRENCE »: a command naming its case, refused in a reply to
    # the digest before (an outside tester). It runs; a command that needs a case still does not.
    digest = wave_of(gw)
    ref = gw.outbound("accuse_reception")[2].raw.split(b"[", 1)[1].split(b"]", 1)[0].decode()
    subject = f"Re: {casemail.parse(digest.raw)['Subject']}"
    gw.feed(casemail.staff_mail(quoting(digest, f"#original {ref}"), in_reply_to=digest.message_id, subject=subject))
    assert gw.outbound("message_original", "agent@ars.test")
    before = count_cases(gw)
    result = gw.feed(casemail.staff_mail(quoting(digest, f"#original {ref}\n#clore"), in_reply_to=digest.message_id,
                                         subject=subject))
    assert result.reason == digest_reply.REASON and count_cases(gw) == before


@pytest.mark.parametrize("text", ["> " * 100_000, "\n" * 200_000, ("> \t" * 1000 + "\n") * 60, "== 1. SSI-" * 20_000])
def test_looking_for_a_quoted_digest_is_linear(text: str) -> None:
    started = time.perf_counter()
    assert not digest_reply.quotes_a_digest(text)
    assert time.perf_counter() - started < 2.0  # a quadratic scan of these takes minutes
    assert digest_reply.quotes_a_digest("Bonjour\n> > == 12. SSI-ARA-2026-0042 — CH\n")


@pytest.mark.parametrize("wide", ["医", "Ａ", "e\u0301\u0301\u0301", "⟹", "①", "\u0600"])
def test_wide_characters_count_twice_in_a_line(wide: str) -> None:
    # An outside tester: 32 « 医 » (2 columns each) made a 76-character line 108 columns wide, so a
    # reader wrapping at 80 started a line with the forged row that followed.
    forged = wide * 40 + " == 2. SSI-ARA-2026-0041 — Hospices Civils de Lyon"
    case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="incident", status="NOUVEAU", title=forged)
    context = {"case": case_context(case), "received_at_fr": "27/11/2026 à 10:00", "declarant": "a@b.test",
               "declaration": {"structure": forged, "summary": forged}, "sender": {"address": "a@b.test"}}
    mail = Renderer().render(wave.TEMPLATE, wave.digest_context(
        settings_for("sqlite://"), "ARA", [wave.Item(case, context, [forged], 1)] * 2, composed=NOW))
    for part in (mail.text, mail.html or ""):
        assert not any(line.startswith("== 2. SSI-ARA-2026-0041") for line in part.splitlines())
    assert max(_width(line) for line in mail.text.splitlines()) <= 80


def test_an_agents_forward_of_a_digest_to_a_colleague_is_filed(gw: Gateway) -> None:
    # An outside tester: Léa forwarded a digest to Marc, the mailbox in copy, no In-Reply-To: it
    # was quarantined as « a forward of a gateway mail » and the whole team told of it.
    digest = wave_of(gw)
    before = count_cases(gw)
    body = ("Marc, peux-tu prendre les dossiers de Grenoble ?\n\n-------- Message transféré --------\n"
            + casemail.text_of(digest.raw))
    subject = f"TR: {casemail.parse(digest.raw)['Subject']}"
    result = gw.feed(casemail.staff_mail(body, to="referent@ars.test, ssi-ara@ars.test", subject=subject))
    assert (result.status, result.reason) == ("processed", digest_reply.FILED)
    assert count_cases(gw) == before and not gw.outbound("recu_commandes")
    result = gw.feed(casemail.staff_mail(body.replace("Marc, peux-tu", "#assigner moi\nMarc, peux-tu"),
                                         to="ssi-ara@ars.test", subject=subject))
    assert result.reason == digest_reply.REASON and "aucun dossier n'a été ouvert" in gw.receipt_text()


def test_links_from_mail_are_defanged_in_a_digest() -> None:
    link = "https://evil.example/login"
    case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="incident", status="NOUVEAU", title=f"CH {link}")
    context = {"case": case_context(case), "received_at_fr": "27/11/2026 à 10:00", "declarant": "a@b.test",
               "declaration": {"structure": f"CH {link}", "summary": f"Voir {link}", "forwarded_author": link},
               "sender": {"address": "a@b.test"}, "ack_refused": link, "unsigned_reply_to": link,
               "from_header": link}
    mail = Renderer().render(wave.TEMPLATE, wave.digest_context(
        settings_for("sqlite://"), "ARA", [wave.Item(case, context, [f"note : {link}"], 1)] * 2, composed=NOW))
    for part in (mail.text, mail.html or ""):
        assert "https://evil" not in part and "evil.example" not in part
    assert "hxxps://evil[.]example/login" in mail.text
