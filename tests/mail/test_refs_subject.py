"""Threading by the ``[SSI-…]`` subject tag alone (mail/refs.py, docs/guarantees.md "Only what the
signature covers steers").

A reply that carries no In-Reply-To/References (a new mail written by hand, a client that drops
them) finds its case by the tag in its subject. For an authenticated sender the subject counts
only when the accepted DKIM signature covers it; unauthenticated mail (an establishment's reply)
is threaded by its subject as a reply — it can never run a command.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from mailgateway.mail.refs import canonical, find_ref, strip_prefixes, thread_case
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway
from tests.support.dkim import dkimpy_sign

# --- the pure rules --------------------------------------------------------------------------------

# What a real signer covers beside the headers under test (mail/analyse.py ``unpinned_reading``).
MIME_READING = ("content-type", "content-transfer-encoding")


class Lookup:
    def __init__(self, answer: str | None = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.asked: list[list[str]] = []

    def __call__(self, ids: Sequence[str]) -> str | None:
        self.asked.append(list(ids))
        if self.error is not None:
            raise self.error
        return self.answer


def test_a_reply_without_thread_headers_is_found_by_its_subject_tag() -> None:
    lookup = Lookup("SSI-PDL-2026-0001")
    assert thread_case([], "RE: [SSI-ARA-2026-0042] suite", lookup) == ("SSI-ARA-2026-0042", "subject")
    assert lookup.asked == []  # nothing to look up


def test_the_subject_tag_is_used_when_the_thread_is_unknown() -> None:
    lookup = Lookup(None)
    found = thread_case(["x@mua.test", "y@mua.test"], "TR: [SSI-ARA-2026-0042]", lookup)
    assert found == ("SSI-ARA-2026-0042", "subject")
    assert lookup.asked == [["x@mua.test", "y@mua.test"]]


def test_a_failing_thread_lookup_falls_back_on_the_subject() -> None:
    lookup = Lookup(error=RuntimeError("database gone"))
    assert thread_case(["x@mua.test"], "[SSI-ARA-2026-0042]", lookup) == ("SSI-ARA-2026-0042", "subject")
    assert thread_case(["x@mua.test"], "bonjour", lookup) == (None, None)


def test_the_thread_wins_over_the_subject_and_the_subject_over_our_message_id() -> None:
    ids = ["ack.SSI-ARA-2026-0007@ars.test"]
    assert thread_case(ids, "[SSI-ARA-2026-0042]", Lookup("SSI-ARA-2026-0001"), ["ars.test"]) == (
        "SSI-ARA-2026-0001", "thread")
    assert thread_case(ids, "[SSI-ARA-2026-0042]", Lookup(None), ["ars.test"]) == ("SSI-ARA-2026-0042", "subject")
    assert thread_case(ids, "bonjour", Lookup(None), ["ars.test"]) == ("SSI-ARA-2026-0007", "message-id")


@pytest.mark.parametrize(("mid", "own", "expected"), [
    ("ack.SSI-ARA-2026-0007@ars.test", ["ars.test"], "SSI-ARA-2026-0007"),
    ("ack.SSI-ARA-2026-0007@ARS.TEST", ["ars.test"], "SSI-ARA-2026-0007"),
    ("ack.SSI-ARA-2026-0007@mx.ars.test", ["ars.test"], "SSI-ARA-2026-0007"),  # a host of ours
    ("ack.SSI-ARA-2026-0007@evilars.test", ["ars.test"], None),  # not a subdomain
    ("ack.SSI-ARA-2026-0007@ars.test.evil.test", ["ars.test"], None),
    ("ack.SSI-ARA-2026-0007@other.test", ["autre.test", "ars.test"], None),
    ("ack.SSI-ARA-2026-0007@other.test", [], "SSI-ARA-2026-0007"),  # no own domain configured
    ("ack.bonjour@ars.test", ["ars.test"], None),
    ("ack.SSI-ARA-2026-0007@x@ars.test", ["ars.test"], "SSI-ARA-2026-0007"),  # the domain: after the last @
    ("ack.SSI-ARA-2026-0007@ars.test@evil.test", ["ars.test"], None),
])
def test_a_reference_in_a_message_id_counts_only_in_ours(mid: str, own: list[str], expected: str | None) -> None:
    ref, how = thread_case(["x@mua.test", mid], "RE: bonjour", Lookup(None), own)
    assert (ref, how) == ((expected, "message-id") if expected else (None, None))


@pytest.mark.parametrize(("text", "expected"), [
    ("[SSI-ARA-2026-0042]", "SSI-ARA-2026-0042"),
    ("ssi-ara-2026-42", "SSI-ARA-2026-0042"),
    ("SSI–ARA–2026–0042", "SSI-ARA-2026-0042"),  # en dashes
    ("SSI.ARA.2026.0042", "SSI-ARA-2026-0042"),
    ("SSI/GUA/1999/7", "SSI-GUA-1999-0007"),
    ("SSI-ARA-2026-123456", "SSI-ARA-2026-123456"),
    ("SSI-ARA-2026-1234567", None),  # a longer number is no reference
    ("SSI-ARA-2126-0042", None),  # years 19xx and 20xx only
    ("SSI-A-2026-0042", None),  # region codes of 2 to 4 letters
    ("SSI-ARAXY-2026-0042", None),
    ("SSI----ARA-2026-0042", None),  # at most 3 separator characters
    ("XSSI-ARA-2026-0042", None),
    ("2SSI-ARA-2026-0042", None),
    ("(SSI-ARA-2026-0042)", "SSI-ARA-2026-0042"),
    ("premier SSI-ARA-2026-0001 puis SSI-ARA-2026-0002", "SSI-ARA-2026-0001"),
    ("", None),
])
def test_find_ref(text: str, expected: str | None) -> None:
    assert find_ref(text) == expected


def test_canonical_form() -> None:
    assert canonical("ara", "2026", "7") == "SSI-ARA-2026-0007"
    assert canonical("Pdl", "2026", "00012") == "SSI-PDL-2026-0012"
    assert canonical("ARA", "2026", "123456") == "SSI-ARA-2026-123456"


@pytest.mark.parametrize(("subject", "expected"), [
    ("RE: TR: Fwd: AW: sujet", "sujet"),
    ("re:sujet", "sujet"),
    ("Re[2]: sujet", "sujet"),
    ("RE [3] : sujet", "sujet"),
    ("RÉF : sujet", "sujet"),
    ("Réf: sujet", "sujet"),
    ("WG: SV: VS: Antw: RIF: FW: sujet", "sujet"),
    ("  RE :  sujet  ", "sujet"),
    ("Rebonjour: sujet", "Rebonjour: sujet"),  # a word, not a prefix
    ("sujet RE: suite", "sujet RE: suite"),  # only at the start
])
def test_strip_prefixes(subject: str, expected: str) -> None:
    assert strip_prefixes(subject) == expected


# --- through the pipeline --------------------------------------------------------------------------


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_a_signed_command_mail_without_thread_headers_finds_its_case_by_the_subject(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.feed(casemail.staff_mail("#assigner moi\n", subject=f"RE: [{ref}] suite"))
    assert (result.status, result.kind, result.case_ref) == ("processed", "command", ref)
    assert gw.case(ref).assignee == "agent@ars.test"


def test_a_subject_outside_the_signature_finds_no_case_and_steers_no_command(gw: Gateway) -> None:
    ref = gw.declare()
    raw = casemail.message(sender="agent@ars.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] suite",
                           body="#assigner moi\n")
    # A valid signature of ars.test that covers From, To, Date and Message-ID, not Subject.
    raw = dkimpy_sign(raw, casemail.staff_key(), headers=("from", "to", "date", "message-id", *MIME_READING)) + raw
    result = gw.feed(raw)
    assert result.case_ref != ref
    assert gw.case(ref).assignee is None
    # Refused, with a receipt (today it says « aucun dossier concerné »: the subject was not read).
    assert "[refusée]  #assigner moi" in gw.receipt_text()


def test_an_unauthenticated_reply_is_threaded_by_its_subject_and_runs_nothing(gw: Gateway) -> None:
    ref = gw.declare()
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] précisions",
                           body="Voici les précisions demandées.\n#clore\n")
    result = gw.feed(raw)
    assert (result.status, result.case_ref) == ("processed", ref)
    assert gw.case(ref).status == "PRIS_EN_COMPTE"  # "#clore" from an unauthenticated sender: nothing


def test_unsigned_thread_headers_naming_another_case_stop_the_commands_in_processing_too(gw: Gateway) -> None:
    """One reading of a message: analysis refuses the commands of a mail whose unsigned
    In-Reply-To names another case than its signed subject; processing used to run them on the
    subject's case anyway (it re-checked only who the sender is)."""
    first = gw.declare(1)
    second = gw.declare(2, finess="690000013", sender="rssi@clinique.test")
    other = gw.notification(second, "agent@ars.test")
    raw = casemail.message(sender="agent@ars.test", to="ssi-ara@ars.test", subject=f"RE: [{first}] suite",
                           body="#assigner moi\n", in_reply_to=other.message_id)
    # Signed over From, To, Date, Message-ID and Subject: In-Reply-To stays outside the signature.
    raw = dkimpy_sign(raw, casemail.staff_key(),
                      headers=("from", "to", "date", "message-id", "subject", *MIME_READING)) + raw
    gw.feed(raw)
    assert gw.case(first).assignee is None and gw.case(second).assignee is None
    text = gw.receipt_text()
    assert "Aucune commande n'a été appliquée : en-têtes In-Reply-To, References non couverts" in text, text
