"""Message factories for tests: realistic inbound mail as bytes.

Each factory returns the raw bytes a mail client or MTA would deliver, so tests exercise the
same path as real mail (``mailgateway.mail.analyse.analyse(raw, ctx)``). Keyword arguments
override headers; ``extra_headers`` adds any header verbatim.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

REGION_ADDRESS = "ssi-ara@ars-sante.test"
STAFF_ADDRESS = "referent.ssi@ars-sante.test"
ACSS_ADDRESS = "alerte@esante.gouv.fr"
DATE = datetime(2026, 11, 24, 14, 3, tzinfo=UTC)


def make_message(
    *,
    sender: str = "dsi@clinique-exemple.test",
    to: str = REGION_ADDRESS,
    subject: str = "Message",
    body: str = "Bonjour.",
    html: str | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    reply_to: str | None = None,
    extra_headers: dict[str, str] | None = None,
    charset: str = "utf-8",
) -> bytes:
    """A well-formed message (text, or text+HTML alternative, or HTML only when body is '')."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(DATE)
    msg["Message-ID"] = message_id or make_msgid(domain=sender.rpartition("@")[2].strip(">") or "x.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    if reply_to:
        msg["Reply-To"] = reply_to
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    if body:
        msg.set_content(body, charset=charset)
        if html:
            msg.add_alternative(html, subtype="html", charset=charset)
    elif html:
        msg.set_content(html, subtype="html", charset=charset)
    else:
        msg.set_content("", charset=charset)
    return msg.as_bytes()


def make_declaration(
    *,
    finess: str = "690781810",
    structure: str = "Centre Hospitalier Exemple",
    category: str = "Centre hospitalier",
    incident_type: str = "Rançongiciel",
    nature: str | None = "Malveillance",
    severity: str | None = None,
    detected: str = "27/11/2026 à 08h30",
    declarant_email: str = "rssi@ch-exemple.test",
    description: str = "Chiffrement de serveurs de fichiers; note de rançon trouvée.",
    measures: str = "Isolement du réseau, coupure VPN.",
    sender: str = "Portail de signalement <ne-pas-repondre@signalement.social-sante.test>",
    to: str = REGION_ADDRESS,
    extra_lines: str = "",
    **kwargs: object,
) -> bytes:
    """A portal-style labelled declaration ("Champ : valeur" lines)."""
    lines = [
        "Une déclaration d'incident de sécurité des systèmes d'information a été déposée.",
        "",
        f"Numéro FINESS : {finess}",
        f"Raison sociale : {structure}",
        f"Catégorie : {category}",
        "Déclarant : Marie Exemple, RSSI",
        f"Courriel du déclarant : {declarant_email}",
        "Téléphone : 04 72 00 00 00",
        f"Date de détection : {detected}",
    ]
    if nature:
        lines.append(f"Nature : {nature}")
    lines.append(f"Type d'incident : {incident_type}")
    if severity:
        lines.append(f"Gravité : {severity}")
    lines += [
        "Impact sur les soins : Oui - déprogrammation",
        "Impact sur les données : Non",
        f"Mesures prises : {measures}",
    ]
    if extra_lines:
        lines.append(extra_lines)
    lines += ["", "Description :", description, ""]
    subject = str(kwargs.pop("subject", "Déclaration d'incident de sécurité des SI n° 2026-ARA-00042"))
    return make_message(sender=sender, to=to, subject=subject, body="\n".join(lines), **kwargs)  # type: ignore[arg-type]


def make_portal_notification(**kwargs: object) -> bytes:
    """Alias of make_declaration: what the national portal sends (from a no-reply address)."""
    return make_declaration(**kwargs)  # type: ignore[arg-type]


def make_reply(
    case_ref: str = "SSI-ARA-2026-0042",
    *,
    body: str = "Merci, voici les informations demandées.",
    sender: str = "dsi@clinique-exemple.test",
    quoted: str = "Votre déclaration a bien été reçue.\n#clore",
    in_reply_to: str | None = None,
    subject_prefix: str = "RE: ",
    **kwargs: object,
) -> bytes:
    """A reply to one of our messages about ``case_ref``, quoting it the French Outlook/Thunderbird way."""
    quote = "\n".join("> " + line for line in quoted.splitlines())
    full = f"{body}\n\nLe 24/11/2026 à 14:05, SSI-ARA a écrit :\n{quote}\n"
    mid = in_reply_to or f"<ack.{case_ref}@ars-sante.test>"
    return make_message(
        sender=sender,
        subject=str(kwargs.pop("subject", f"{subject_prefix}[{case_ref}] Accusé de réception")),
        body=full,
        in_reply_to=mid,
        references=mid,
        **kwargs,  # type: ignore[arg-type]
    )


def make_alert(
    *,
    sender: str = f"CERT Santé <{ACSS_ADDRESS}>",
    reference: str = "CERTFR-2026-ALE-012",
    tlp: str = "TLP:AMBER",
    title: str = "Vulnérabilité critique dans un VPN",
    body_extra: str = "Voir CVE-2026-12345 et l'adresse hxxps://malveillant[.]example/x",
    **kwargs: object,
) -> bytes:
    body = (
        f"{tlp}\n\nRéférence : {reference}\nTitre : {title}\n"
        "Structures concernées : établissements de santé, laboratoires de biologie médicale\n\n"
        f"Résumé :\n{body_extra}\n"
    )
    subject = str(kwargs.pop("subject", f"[{tlp}] Alerte - {title}"))
    return make_message(sender=sender, subject=subject, body=body, **kwargs)  # type: ignore[arg-type]


def make_dsn(
    *,
    recipient: str = "ssi@ch-exemple.test",
    status: str = "5.1.1",
    action: str = "failed",
    original_message_id: str = "<out-1@ars-sante.test>",
    to: str = "bounces+tok123@ars-sante.test",
    headers_only: bool = False,
) -> bytes:
    """An RFC 3464 delivery status notification returning one of our messages."""
    boundary = "DSN-BOUNDARY"
    returned_type = "text/rfc822-headers" if headers_only else "message/rfc822"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.ch-exemple.test>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Tue, 24 Nov 2026 14:03:00 +0100\r\n"
        "Message-ID: <dsn-1@mx.ch-exemple.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system. Your message could not be delivered.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.ch-exemple.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} User unknown\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: {returned_type}\r\n\r\n"
        "From: ssi-ara@ars-sante.test\r\n"
        f"To: {recipient}\r\n"
        "Subject: [SSI-ARA-2026-0042] Bulletin\r\n"
        f"Message-ID: {original_message_id}\r\n"
        "\r\n" + ("" if headers_only else "Bonjour.\r\n") + f"--{boundary}--\r\n"
    ).encode("ascii")
