"""One view of a message (docs/guarantees.md, item 1): the bytes that are verified are the bytes acted on.

Each attack starts from a genuinely DKIM-signed mail (real keys, tests/support/dkim.py) that the
attacker received or saw and then altered in transit, and goes through the same two steps as the
daemon: ``Authenticator.verify`` then ``analyse``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from mailgateway.dns import StaticResolver
from mailgateway.mail.analyse import analyse
from mailgateway.mail.auth import Authenticator
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.mail.parse import parse_message, views_problem
from mailgateway.settings import AuthenticationSettings
from mailgateway.wire import canonical, header_block_problem, header_block_refusal
from tests.support import casemail
from tests.support.dkim import GeneratedKey, dkimpy_sign, dkimpy_verify, rsa_key, zone

STAFF = "agent@ars.test"
CASE = "SSI-ARA-2026-0042"
VICTIM = "SSI-ARA-2026-0007"
NOTIFICATION = "<notif.42@ars.test>"
OTHER_NOTIFICATION = "<notif.7@ars.test>"
THREADS = {NOTIFICATION: CASE, OTHER_NOTIFICATION: VICTIM}

# What a real signer covers beside the headers under test (mail/analyse.py ``unpinned_reading``).
MIME_READING = ("content-type", "content-transfer-encoding")


def _lookup(ids: Sequence[str]) -> str | None:
    for mid in ids:
        found = THREADS.get(mid if mid.startswith("<") else f"<{mid}>")
        if found:
            return found
    return None


CTX = AnalysisContext(
    region_addresses={"ssi-ara@ars.test": "ARA"},
    own_addresses=frozenset({"ssi-ara@ars.test"}),
    bounce_domain="ars.test",
    loop_token="mailgateway:ars.test",
    staff={STAFF: frozenset({"ARA"})},
    acss_domains=("esante.test",),
    thread_lookup=_lookup,
)


def acss_key() -> GeneratedKey:
    return rsa_key("sel", "esante.test")


def authenticator(*, keys: bool = True) -> Authenticator:
    records = zone(casemail.staff_key(), acss_key()) if keys else {}
    return Authenticator(AuthenticationSettings(trusted_authserv_ids=("mx.ars.test",)), StaticResolver(records))


def run(raw: bytes, *, trusted_path: bool = False, keys: bool = True) -> MessageFacts:
    verdict = authenticator(keys=keys).verify(raw, trusted_path=trusted_path)
    return analyse(raw, CTX, verdict)


def staff_reply(body: str, *, subject: str = f"RE: [{CASE}] Nouvelle déclaration",
                in_reply_to: str | None = NOTIFICATION) -> bytes:
    raw = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject=subject, body=body, in_reply_to=in_reply_to)
    return casemail.sign(raw)


def signed_with(raw: bytes, key: GeneratedKey, headers: tuple[str, ...]) -> bytes:
    return dkimpy_sign(raw, key, headers=headers) + raw


def with_subject(raw: bytes, subject: str) -> bytes:
    """``raw`` with its Subject field's value replaced (in place: same position, one instance)."""
    start = raw.index(b"\r\nSubject: ") + len(b"\r\nSubject: ")
    end = raw.index(b"\r\n", start)
    return raw[:start] + subject.encode() + raw[end:]


def accepted(facts: MessageFacts) -> list[str]:
    return [c.name for c in facts.commands if c.accepted]


# --- the benign cases still authenticate and act ---------------------------------------------------


def test_signed_staff_command_is_applied_to_its_case() -> None:
    raw = staff_reply("#clore\n")
    verdict = authenticator().verify(raw)
    assert verdict.authenticated
    assert {"from", "subject", "in-reply-to", "references"} <= verdict.signed_headers
    assert verdict.signature_key is not None and verdict.signature_key.startswith("dkim:ars.test:")
    facts = analyse(raw, CTX, verdict)
    assert (facts.kind, facts.case_ref, accepted(facts)) == ("command", CASE, ["clore"])


def test_signature_key_ignores_refolding_of_b() -> None:
    raw = staff_reply("#clore\n")
    key = authenticator().verify(raw).signature_key
    relayed = b"Received: from mx.ars.test by gateway.test; Fri, 27 Nov 2026 10:00:01 +0100\r\n" + raw
    assert authenticator().verify(relayed).signature_key == key


def test_bare_lf_mail_is_the_same_message() -> None:
    # mbox files, IMAP servers and `mailgateway ingest` may hand over LF-only mail.
    raw = staff_reply("#clore\n").replace(b"\r\n", b"\n")
    facts = run(raw)
    assert facts.sender.authenticated
    assert (facts.kind, facts.case_ref, accepted(facts)) == ("command", CASE, ["clore"])


def test_signer_that_does_not_cover_in_reply_to_still_works_when_it_steers_nothing() -> None:
    # Some signers never cover In-Reply-To/References; the covered [SSI-…] subject names the case.
    raw = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject=f"RE: [{CASE}] Nouvelle déclaration",
                           body="#clore\n", in_reply_to=NOTIFICATION)
    facts = run(signed_with(raw, casemail.staff_key(), ("from", "to", "subject", "date", "message-id", *MIME_READING)))
    assert facts.sender.authenticated
    assert (facts.kind, facts.case_ref, accepted(facts)) == ("command", CASE, ["clore"])


# --- item 1: prepended duplicates ------------------------------------------------------------------


@pytest.mark.parametrize(
    "prepended",
    [
        f"Subject: RE: [{VICTIM}] x\r\nIn-Reply-To: {OTHER_NOTIFICATION}\r\n",
        f"In-Reply-To: {OTHER_NOTIFICATION}\r\n",
        "Subject: #clore\r\n",
        f"References: {OTHER_NOTIFICATION}\r\n",
        "From: agent@ars.test\r\n",
    ],
)
def test_prepended_duplicate_is_never_authenticated_nor_acted_on(prepended: str) -> None:
    raw = prepended.encode() + staff_reply("Merci.\n#note vu\n")
    facts = run(raw)
    assert not facts.sender.authenticated
    assert "Duplicate" in facts.sender.detail
    assert facts.kind == "unknown"
    assert facts.quarantine_reason is not None and "présent plusieurs fois" in facts.quarantine_reason
    assert (facts.case_ref, facts.commands) == (None, ())


# --- item 1: the bare-CR fold trick ------------------------------------------------------------------


def _fold_trick(raw: bytes, injected: bytes) -> bytes:
    """An unsigned X-Mailer whose "continuation" lines follow a bare CR, at the end of the header."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\nX-Mailer: x\r\r\n" + injected.removesuffix(b"\r\n") + sep + body


def test_bare_cr_fold_is_one_field_for_dkim_and_end_of_header_for_email() -> None:
    raw = _fold_trick(staff_reply("Merci pour ces éléments.\n"), b" #clore\r\n #repondre https://phish.test/x\r\n")
    # The premise of the attack: dkimpy still verifies the signature (X-Mailer is not signed).
    assert dkimpy_verify(raw, zone(casemail.staff_key()))
    facts = run(raw)
    assert not facts.sender.authenticated
    assert facts.kind == "unknown" and facts.commands == ()
    assert facts.quarantine_reason is not None and "retour chariot" in facts.quarantine_reason


def test_bare_cr_fold_cannot_rewrite_an_authentic_alert() -> None:
    body = "Titre : Vulnérabilité critique VPN\nTLP : AMBER\nRéférence : 2026-ALE-031\n\nDétails.\n"
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test",
                           subject="[TLP:AMBER] Alerte 2026-ALE-031", body=body)
    raw = casemail.sign(raw, acss_key())
    genuine = run(raw).alert
    assert genuine is not None and genuine.authentic and genuine.tlp == "AMBER"
    forged = _fold_trick(raw, b" TLP:CLEAR\r\n Titre : Mise a jour urgente https://malware.test\r\n")
    assert dkimpy_verify(forged, zone(acss_key()))
    facts = run(forged)
    assert facts.kind == "unknown" and facts.alert is None
    assert not facts.sender.authenticated


# --- item 1: a Subject (or threading header) the signature does not cover ------------------------


def test_unsigned_subject_does_not_choose_the_case() -> None:
    original = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject="Point de situation", body="#clore\n")
    signed = signed_with(original, casemail.staff_key(), ("from", "to", "date", "message-id", *MIME_READING))
    forged = with_subject(signed, f"RE: [{VICTIM}] suivi")
    facts = run(forged)
    assert facts.sender.authenticated  # the signature is valid: Subject is not in its h=
    assert accepted(facts) == []
    assert facts.case_ref is None
    assert [c.reason for c in facts.commands] == ["en-tête Subject non couvert par la signature DKIM"]


def test_unsigned_subject_query_is_refused() -> None:
    original = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject="bonjour", body="Merci.\n")
    signed = signed_with(original, casemail.staff_key(), ("from", "to", "date", "message-id", *MIME_READING))
    facts = run(with_subject(signed, f"#statut {VICTIM}"))
    assert facts.kind == "command"
    assert accepted(facts) == []
    assert facts.commands[0].reason == "en-tête Subject non couvert par la signature DKIM"
    assert not facts.is_bulletin_request


def test_added_in_reply_to_does_not_thread_commands() -> None:
    # A signer that covers In-Reply-To only when present (most do; ours over-signs it): an
    # attacker may add one.
    unsigned = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject="Point de situation", body="#clore\n")
    raw = signed_with(unsigned, casemail.staff_key(), ("from", "to", "subject", "date", "message-id", *MIME_READING))
    forged = f"In-Reply-To: {OTHER_NOTIFICATION}\r\n".encode() + raw
    facts = run(forged)
    assert facts.sender.authenticated
    assert facts.case_ref is None and facts.in_reply_to == ()
    assert accepted(facts) == []
    assert facts.commands[0].reason == "en-tête In-Reply-To non couvert par la signature DKIM"


def test_alert_with_unsigned_subject_is_not_authentic_and_keeps_the_signed_tlp() -> None:
    body = "TLP : AMBER\nRéférence : 2026-ALE-031\n\nUne vulnérabilité critique touche les VPN.\n"
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test", subject="Alerte 2026-ALE-031",
                           body=body)
    genuine = signed_with(raw, acss_key(), ("from", "to", "subject", "date", "message-id", *MIME_READING))
    facts = run(genuine)
    assert facts.alert is not None and facts.alert.authentic and facts.alert.tlp == "AMBER"
    partial = signed_with(raw, acss_key(), ("from", "to", "date", "message-id", *MIME_READING))
    forged = with_subject(partial, "[TLP:CLEAR] Alerte: Installez https://x.test")
    facts = run(forged)
    assert facts.kind == "alert" and facts.alert is not None
    assert not facts.alert.authentic
    assert facts.alert.tlp == "AMBER"
    assert "x.test" not in (facts.alert.title or "") and "x.test" not in facts.subject


# --- item 5: Authentication-Results only from the trusted path -----------------------------------


def _forged_ar(raw: bytes) -> bytes:
    forged = b"Authentication-Results: mx.ars.test; dkim=pass header.d=ars.test; dmarc=pass header.from=ars.test"
    return forged + b"\r\n" + raw


def test_forged_authentication_results_straight_to_smtp_authenticate_nothing() -> None:
    raw = _forged_ar(casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject=f"RE: [{CASE}] x",
                                      body="#clore\n", in_reply_to=NOTIFICATION))
    facts = run(raw, trusted_path=False)
    assert not facts.sender.authenticated
    assert accepted(facts) == []


def test_trusted_relay_results_cover_what_the_named_signature_covers() -> None:
    # Our MTA checked the signature (we cannot: no key here) and said so with its authserv-id.
    signed = staff_reply("#clore\n")
    raw = b"Authentication-Results: mx.ars.test; dkim=pass header.d=ars.test\r\n" + signed
    facts = run(raw, trusted_path=True, keys=False)
    assert facts.sender.method == "authentication-results"
    assert "in-reply-to" in facts.sender.signed_headers
    assert (facts.case_ref, accepted(facts)) == (CASE, ["clore"])


def test_trusted_relay_dmarc_pass_without_a_signature_steers_nothing() -> None:
    raw = b"Authentication-Results: mx.ars.test; dmarc=pass header.from=ars.test\r\n" + casemail.message(
        sender=STAFF, to="ssi-ara@ars.test", subject=f"RE: [{CASE}] x", body="#clore\n", in_reply_to=NOTIFICATION)
    facts = run(raw, trusted_path=True)
    assert facts.sender.authenticated and facts.sender.signed_headers == frozenset()
    assert accepted(facts) == []
    assert "non couverts par la signature DKIM" in (facts.commands[0].reason or "")


# --- item 4 and the analysis budget --------------------------------------------------------------


def test_dkim_cost_bomb_is_refused_before_dkimpy() -> None:
    names = ":".join(f"x-absent-{i}" for i in range(5000))
    bomb = (f"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s=rsa; h=from:{names}; bh=AAAA; b=AAAA\r\n"
            + "".join(f"X-Filler-{i}: {'y' * 100}\r\n" for i in range(900))).encode()
    raw = bomb + casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject="x", body="#clore\n")
    started = time.perf_counter()
    verdict = authenticator().verify(raw)
    facts = analyse(raw, CTX, verdict)
    elapsed = time.perf_counter() - started
    assert not verdict.authenticated
    assert "more than 64" in verdict.detail
    assert facts.kind == "unknown" and "maximum 64" in (facts.quarantine_reason or "")
    assert elapsed < 2.0


def test_too_many_header_fields_are_over_budget() -> None:
    raw = "".join(f"X-F-{i}: y\r\n" for i in range(1001)).encode() + staff_reply("#clore\n")
    facts = run(raw)
    assert not facts.sender.authenticated
    assert facts.kind == "unknown" and "trop de champs" in (facts.quarantine_reason or "")


def test_oversized_header_block_is_refused() -> None:
    raw = b"X-Big: " + b"a" * (300 * 1024) + b"\r\n" + staff_reply("#clore\n")
    assert header_block_refusal(raw) == (
        "Header block larger than 256 KB / message refuse : en-tetes trop volumineux (plus de 256 Ko)"
    )
    assert run(raw).kind == "unknown"


def test_smtp_refusal_is_ascii_and_says_why_in_french_too() -> None:
    raw = b"Subject: a\r\nSubject: b\r\n" + staff_reply("#clore\n")
    refusal = header_block_refusal(raw) or ""
    assert refusal.isascii()
    assert "Duplicate Subject header field" in refusal and "en-tete Subject present plusieurs fois" in refusal


def test_a_second_identical_mime_version_is_harmless() -> None:
    """Antivirus gateways add one; no parser decides anything from it (RFC 2045 §4: always 1.0)."""
    raw = b"MIME-Version: 1.0\r\n" + staff_reply("#note vu\n")
    assert header_block_problem(raw) is None
    assert run(raw).sender.authenticated


# --- wire: the pure functions --------------------------------------------------------------------


def test_canonical_turns_bare_lf_into_crlf_and_keeps_bare_cr() -> None:
    assert canonical(b"A: b\nC: d\r\n\nx\ry\n") == b"A: b\r\nC: d\r\n\r\nx\ry\r\n"
    assert canonical(b"\xef\xbb\xbfA: b\n\nx") == b"A: b\r\n\r\nx"
    once = canonical(b"A: b\r\r\n\nx\n")
    assert canonical(once) == once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From: a@b.test\r\nSubject: x\r\n\r\nbody\rwith CR\r\n", None),
        (b"From sender@b.test Fri Nov 27 08:00:00 2026\nFrom: a@b.test\n\nbody\n", None),
        (b"Subject: x\r\n\tfolded\r\n\r\n", None),
        (b"Received: a\r\nReceived: b\r\n\r\n", None),
        (b"X-Mailer: x\r\r\n #clore\r\n\r\n", "retour chariot (CR) isolé dans les en-têtes"),
        (b"A: b\rC: d\r\n\r\n", "retour chariot (CR) isolé dans les en-têtes"),
        (b" x\r\nA: b\r\n\r\n", "ligne de continuation avant le premier champ d'en-tête"),
        (b"A: b\r\nFrom x@y\r\n\r\n", "ligne « From » d'enveloppe au milieu des en-têtes"),
        (b"A: b\r\njunk line\r\n\r\n", "ligne d'en-tête invalide (ni champ « nom: valeur » ni continuation)"),
        (b"A: b\r\nSubject : b\r\n\r\n", "ligne d'en-tête invalide (ni champ « nom: valeur » ni continuation)"),
        (b": b\r\n\r\n", "ligne d'en-tête invalide (ni champ « nom: valeur » ni continuation)"),
        (b"Message-Id: <a@b>\r\nMESSAGE-ID: <c@d>\r\n\r\n",
         "en-tête Message-ID présent plusieurs fois (RFC 5322 §3.6)"),
        (b"Content-Type: text/plain\r\nContent-type: text/html\r\n\r\n",
         "en-tête Content-Type présent plusieurs fois (RFC 5322 §3.6)"),
    ],
)
def test_header_block_problem(raw: bytes, expected: str | None) -> None:
    assert header_block_problem(raw) == expected


def test_header_block_problem_is_linear_on_hostile_input() -> None:
    for raw in (b"A: " + b" " * 200_000 + b"\r\n\r\n", b"A: b\r\n" + b"\t" * 200_000 + b"\r\n\r\n",
                b"X" * 250_000 + b":\r\n\r\n", b"A: b\r\n" * 999 + b"\r\n"):
        started = time.perf_counter()
        header_block_problem(raw)
        assert time.perf_counter() - started < 0.5


def test_views_problem_names_a_disagreement() -> None:
    seen = parse_message(b"From: a@b.test\r\nSubject: signed\r\n\r\nx")
    assert views_problem(b"From: a@b.test\r\nSubject: signed\r\n\r\nx", seen.msg) is None
    problem = views_problem(b"From: a@b.test\r\nSubject: other\r\n\r\nx", seen.msg)
    assert problem == "en-tête Subject lu différemment par la vérification DKIM et l'analyse"


def test_never_authenticated_even_when_the_caller_says_so() -> None:
    # Analysis does not trust a verdict computed elsewhere for an ambiguous header block.
    raw = b"Subject: a\r\nSubject: b\r\nFrom: agent@ars.test\r\n\r\n#clore\r\n"
    given = SenderVerdict(address=STAFF, domain="ars.test", authenticated=True, method="dkim",
                          signed_headers=frozenset({"from", "subject"}))
    facts = analyse(raw, CTX, given)
    assert not facts.sender.authenticated and facts.sender.signature_key is None
    assert facts.kind == "unknown"


def test_replay_key_is_the_signed_content_not_the_malleable_b_value() -> None:
    """Attacker probe, round 2: RSA verifiers read b= as an integer, so zero bytes prepended to it
    ("AAAA" in base64) still verify; keyed on b=, that copy was a "new" signature and ran again."""
    raw = staff_reply("#note vu\n")
    first = authenticator().verify(raw)
    start = raw.index(b" b=") + 3
    doctored = raw[:start] + b"AAAA" + raw[start:]
    second = authenticator().verify(doctored)
    assert first.authenticated and second.authenticated, second.detail
    assert first.signature_key is not None and second.signature_key == first.signature_key


# --- body lines: LF only, as DKIM and mail clients read them (an outside tester) ---------------------


@pytest.mark.parametrize("between", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_signed_line_holding_another_line_break_character_is_one_line(between: str) -> None:
    raw = staff_reply(f"#note bonjour{between}#qualifier sans-suite\n")
    facts = run(raw)
    assert facts.sender.authenticated
    assert accepted(facts) == ["note"]  # one line for DKIM, the signer's client and analysis
    assert facts.commands[0].args and "sans-suite" in " ".join(facts.commands[0].args)


def test_control_characters_never_reach_a_commands_arguments() -> None:
    facts = run(staff_reply("#qualifier\x00 sans-suite\n#note a\x07b\x1bc\n"))
    assert accepted(facts) == ["qualifier", "note"]
    for command in facts.commands:
        assert not any(ord(ch) < 0x20 for arg in command.args for ch in arg), command.args


def test_crlf_and_lf_bodies_read_the_same() -> None:
    crlf = parse_message(b"Content-Type: text/plain\r\n\r\n#clore\r\n#note vu\r\n").text()
    lf = parse_message(b"Content-Type: text/plain\n\n#clore\n#note vu\n").text()
    assert crlf == lf == "#clore\n#note vu\n"


# --- the headers that decide how the signed body reads (Content-Type, Content-Transfer-Encoding) ---
# An outside attacker: a genuine staff reply quoting his own declaration, re-sent with one MIME
# header changed that the agency's signer (Office 365: no Content-Transfer-Encoding; Gmail: no
# Content-Type) left out of h=. The body hash still holds; the planted bytes read as commands.

O365 = ("from", "to", "subject", "date", "message-id", "in-reply-to", "references", "content-type", "mime-version")
GMAIL = ("mime-version", "references", "in-reply-to", "from", "date", "message-id", "subject", "to")
PLANTED = "Des postes sont chiffrés. =0A#qualifier sans-suite=0A#clore Fausse alerte=0A"


def _reply(body: str) -> bytes:
    """An agent's reply to a notification, not signed yet."""
    return casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject=f"RE: [{CASE}] Nouvelle déclaration",
                            body=body, in_reply_to=NOTIFICATION)


def _bottom_posted_reply() -> bytes:
    """Thunderbird, 8bit, the agent's words under the declarant's quoted text: no command."""
    return _reply(f"Le 07/12/2026 à 09:00, dsi@chu.test a écrit :\n> {PLANTED}\n\nBien reçu, nous regardons.\n")


def _with_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    start = raw.index(b"\r\n" + name + b": ") + len(name) + 4
    return raw[:start] + value + raw[raw.index(b"\r\n", start):]


def test_an_unsigned_transfer_encoding_switched_runs_nothing() -> None:
    raw = _bottom_posted_reply()
    assert b"Content-Transfer-Encoding: 8bit" in raw, raw
    genuine = signed_with(raw, casemail.staff_key(), O365)
    facts = run(genuine)
    assert facts.sender.authenticated and facts.commands == ()
    forged = run(_with_header(genuine, b"Content-Transfer-Encoding", b"quoted-printable"))
    assert forged.sender.authenticated and [c.name for c in forged.commands] == ["qualifier", "clore"]
    assert accepted(forged) == []
    reason = "en-tête Content-Transfer-Encoding non couvert par la signature DKIM"
    assert {c.reason for c in forged.commands} == {reason}


@pytest.mark.parametrize(("planted", "value"), [
    ("Postes chiffrés.<br><br>#clore Fausse alerte<br>", b"text/html; charset=utf-8"),
    ("Postes chiffres.+AAo-+ACM-clore Fausse alerte+AAo-", b"text/plain; charset=utf-7"),
])
def test_an_unsigned_content_type_changed_runs_nothing(planted: str, value: bytes) -> None:
    raw = _reply(f"Le 07/12/2026, dsi@chu.test a ecrit :\n> {planted}\n\nVu.\n")
    genuine = signed_with(raw, casemail.staff_key(), GMAIL)
    assert run(genuine).commands == ()
    forged = run(_with_header(genuine, b"Content-Type", value))
    assert forged.sender.authenticated and [c.name for c in forged.commands] == ["clore"]
    assert accepted(forged) == []


def test_signed_reading_headers_or_a_multiparts_own_encoding_refuse_nothing() -> None:
    """A signer that covers them (OpenDKIM, dkimpy, rspamd by default) runs the agent's commands;
    a multipart's own Content-Transfer-Encoding reads nothing, covered or not (Outlook's
    multipart/alternative through Office 365)."""
    raw = _reply("#qualifier grave\n")
    assert accepted(run(signed_with(raw, casemail.staff_key(), (*O365, "content-transfer-encoding")))) == ["qualifier"]
    # Single part, its encoding unsigned (Exchange Online), but the only reading its bytes admit
    # (mail/transfer.py): an iPhone's or OWA's plain text was refused (an outside tester).
    assert accepted(run(signed_with(raw, casemail.staff_key(), O365))) == ["qualifier"]
    multipart = (b"From: " + STAFF.encode() + b"\r\nTo: ssi-ara@ars.test\r\nSubject: RE: [" + CASE.encode()
                 + b"] Nouvelle d\xc3\xa9claration\r\nDate: Mon, 07 Dec 2026 09:00:00 +0100\r\n"
                 + b"Message-ID: <mp-1@ars.test>\r\nIn-Reply-To: " + NOTIFICATION.encode()
                 + b"\r\nMIME-Version: 1.0\r\n"
                 + b"Content-Type: multipart/alternative; boundary=\"b1\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                 + b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                 + b"#qualifier grave\r\n--b1--\r\n")
    assert accepted(run(signed_with(multipart, casemail.staff_key(), O365))) == ["qualifier"]
    assert accepted(run(signed_with(multipart, casemail.staff_key(), GMAIL))) == []  # its boundary unsigned


def test_an_alert_whose_reading_is_not_signed_is_not_authentic() -> None:
    body = "TLP : AMBER\nRéférence : 2026-ALE-031\n\nUne vulnérabilité critique touche les VPN.\n"
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test", subject="Alerte 2026-ALE-031",
                           body=body)
    facts = run(signed_with(raw, acss_key(), ("from", "to", "subject", "date", "message-id")))
    assert facts.kind == "alert" and facts.alert is not None and not facts.alert.authentic


def test_a_plain_text_alert_signed_like_exchange_online_is_authentic() -> None:
    """An outside tester: a genuine CERT Santé alert in quoted-printable plain text, signed without
    Content-Transfer-Encoding, was « NON AUTHENTIFIÉE » and could not be relayed."""
    body = "TLP : AMBER\nRéférence : 2026-ALE-049\n\nUne vulnérabilité critique touche les passerelles VPN.\n"
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test", subject="Alerte 2026-ALE-049",
                           body=body).replace(b"Content-Transfer-Encoding: 8bit",
                                              b"Content-Transfer-Encoding: quoted-printable")
    head, _, text = raw.partition(b"\r\n\r\n")
    import quopri
    raw = head + b"\r\n\r\n" + quopri.encodestring(text.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    facts = run(signed_with(raw, acss_key(), ("from", "to", "subject", "date", "message-id", "content-type",
                                              "mime-version")))
    assert facts.kind == "alert" and facts.alert is not None and facts.alert.authentic


def test_an_agents_reply_relabelled_is_no_forward_of_a_declaration_by_the_agent() -> None:
    """An outside attacker: his quoted « …=0A---------- Message transfere …=0ADe : SSI CHU Angers …
    =0ANumero FINESS … » in a genuine agent's reply (8bit, Exchange Online's h=), relabelled
    quoted-printable, became the agent's forward of Angers' declaration: a case, and an
    acknowledgement signed by the agency to Angers."""
    planted = ("Question=0A---------- Message transfere ---------=0ADe : SSI CHU Angers <ssi@chu-angers.test>"
               "=0AObjet : Declaration=0A=0ANumero FINESS : 490000031=0AType d'incident : rancongiciel=0A")
    raw = casemail.message(sender=STAFF, to="ssi-ara@ars.test", subject="RE: Question procedure",
                           body=f"Bonjour,\n\nLe 07/12/2026, ssi a ecrit :\n> {planted}\n", in_reply_to="<q@chu.test>")
    genuine = signed_with(raw, casemail.staff_key(), O365)
    assert run(genuine).extra.get("transmis_par") is None  # what the agent wrote forwards nothing
    forged = run(_with_header(genuine, b"Content-Transfer-Encoding", b"quoted-printable"))
    assert not forged.sender.authenticated
    assert forged.declaration is None or (forged.declaration.declarant != "ssi@chu-angers.test"
                                          and forged.extra.get("transmis_par") is None)


@pytest.mark.parametrize(("raw", "open_headers"), [
    # An outside attacker, round 4: a genuine QP reply with its unsigned Content-Transfer-Encoding
    # deleted (or renamed) reads as 7bit, its soft breaks cutting lines — and a command accepted.
    (b"From: agent@ars.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n> " + b"x" * 73
     + b"=\r\n#clore Fausse alerte\r\n", ["Content-Transfer-Encoding"]),
    (b"From: agent@ars.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n#note vu, merci.\r\n", []),
    # A Content-Type deleted reads a MIME body as plain text.
    (b"From: agent@ars.test\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n#clore\r\n--b1--\r\n", ["Content-Type"]),
    (b"From: agent@ars.test\r\n\r\n#note vu\r\n", []),
])
def test_an_unsigned_reading_header_deleted_is_still_judged(raw: bytes, open_headers: list[str]) -> None:
    from mailgateway.mail.analyse import unpinned_reading
    signed = {"from", "subject"} | ({"content-type"} if b"Content-Type" in raw.split(b"\r\n\r\n")[0] else set())
    verdict = SenderVerdict(address=STAFF, domain="ars.test", authenticated=True, method="dkim",
                            auth_domain="ars.test", signed_headers=frozenset(signed))
    assert unpinned_reading(parse_message(raw), verdict, raw) == open_headers
