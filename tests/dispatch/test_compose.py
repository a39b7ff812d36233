"""Outbound composition: untrusted text stays text (no header or template injection)."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

from mailgateway.clock import FixedClock
from mailgateway.dispatch.compose import Attachment, Composer, MailSpec, stable_message_id
from mailgateway.dispatch.render import Renderer

CTX = {
    "service_name": "Cellule SSI", "region_name": "Pays de la Loire", "region_address": "ssi-pdl@ars.test",
    "received_at_fr": "27/11/2026 à 08:30",
}


def _composer() -> Composer:
    return Composer(Renderer(), None, FixedClock(datetime(2026, 11, 27, 8, 30, tzinfo=UTC)), "ars.test", "loop-1")


def _case(**kw: object) -> dict[str, object]:
    return {"reference": "SSI-PDL-2026-0001", "establishment": None, "finess": None, **kw}


def _spec(**kw: object) -> MailSpec:
    base = dict(template="acknowledgement", context={**CTX, "case": _case(), "subject": "x"}, to="dsi@chu.test",
                from_address="ssi-pdl@ars.test", from_name="ARS", idempotency_key="k")
    base.update(kw)
    return MailSpec(**base)  # type: ignore[arg-type]


def test_crlf_hidden_in_encoded_words_cannot_inject_headers() -> None:
    # =?utf-8?q?x=0D=0ABcc:_evil@x.test?= decodes to a CR/LF followed by a Bcc header.
    evil_subject = "=?utf-8?q?x=0D=0ABcc:_evil@x.test?="
    decoded = str(email.message_from_bytes(f"Subject: {evil_subject}\n\n".encode(), policy=policy.default)["Subject"])
    out = _composer().compose(_spec(
        context={**CTX, "case": _case(establishment=decoded), "subject": decoded},
        in_reply_to="<a@b.test>\r\nBcc: evil@x.test", references=["<r@b.test>\nBcc: evil@x.test"],
    ))
    msg = email.message_from_bytes(out.raw, policy=policy.default)
    assert msg["Bcc"] is None
    assert msg["In-Reply-To"] == "<a@b.test>"
    headers = out.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in headers


def test_template_syntax_in_mail_is_shown_literally() -> None:
    out = _composer().compose(_spec(context={**CTX, "case": _case(establishment="{{ 7*7 }} {% if 1 %}x{% endif %}"),
                                             "subject": "{{ config }}"}))
    text = email.message_from_bytes(out.raw, policy=policy.default).get_body(("plain",)).get_content()
    assert "{{ 7*7 }}" in text and "49" not in text
    assert "{{ config }}" in text


def test_html_alternative_escapes_untrusted_text() -> None:
    out = _composer().compose(_spec(context={**CTX, "case": _case(establishment="<script>alert(1)</script>"),
                                             "subject": "s"}))
    html = email.message_from_bytes(out.raw, policy=policy.default).get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_our_mail_is_marked_automatic_and_has_a_stable_message_id() -> None:
    secret = b"s" * 32
    composer = Composer(Renderer(), None, FixedClock(datetime(2026, 11, 27, 8, 30, tzinfo=UTC)), "ars.test",
                        "loop-1", id_secret=secret)
    out = composer.compose(_spec())
    msg = email.message_from_bytes(out.raw, policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Mailgateway-Loop"] == "loop-1"
    # Stable: the same logical mail (same key, same installation secret) has the same Message-ID.
    assert msg["Message-ID"] == stable_message_id("k", "ars.test", secret) == out.message_id
    assert composer.compose(_spec()).message_id == out.message_id


def test_original_is_attached_verbatim_as_message_rfc822() -> None:
    original = b"From: a@b.test\r\nSubject: orig\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
    out = _composer().compose(_spec(attachments=[Attachment(original, "original.eml")]))
    assert original in out.raw
    msg = email.message_from_bytes(out.raw, policy=policy.default)
    assert any(p.get_content_type() == "message/rfc822" for p in msg.walk())


def test_tlp_label_is_in_the_subject() -> None:
    out = _composer().compose(_spec(tlp="AMBER"))
    assert out.subject.startswith("[TLP:AMBER]")
