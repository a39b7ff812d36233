"""Issue 16 through the real daemon over SMTP, acknowledgements caught at a loopback relay: the
README tour mail as swaks sends it (raw UTF-8 Subject) comes back decoded, and a phishing mail
forwarded as message/rfc822 is acknowledged to the forwarder only, never to the phisher."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

from tests.mail.test_forwarded import PHISHING, forward_as_attachment
from tests.support import casemail
from tests.support.dkim import zone
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.servers import SmtpSink

TOUR = ("From: rssi@chu.test\r\nTo: ssi-pdl@ars.test\r\nSubject: Déclaration d'incident : rançongiciel\r\n"
        "Message-ID: <tour-smtp@chu.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\n\r\n"
        "Numéro FINESS : 440000289\r\nType d'incident : rançongiciel\r\nDate de détection : 27/11/2026 à 08h30\r\n"
        "Gravité : grave\r\n\r\nPostes chiffrés, demande de rançon.\r\n").encode()


def test_tour_mail_and_forwarded_phishing_over_smtp(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port,
                           static_keys=zone(casemail.establishment_key()))
    with RunningGateway(config) as gw:
        gw.send(casemail.sign(TOUR, casemail.establishment_key()), mail_from="rssi@chu.test")
        ack = wait_until(lambda: smtp_sink.messages_to("rssi@chu.test"), timeout=20)[0]
        msg = email.message_from_bytes(ack.raw, policy=policy.default)
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "Objet de votre message : Déclaration d'incident : rançongiciel" in text
        assert "\ufffd" not in text

        forwarded = forward_as_attachment("Secrétariat <secretariat@chu.test>",
                                          "Courriel d'hameçonnage reçu ce matin, je vous le transfère.", PHISHING)
        gw.send(forwarded.replace(b"ssi-ara@ars.test", b"ssi-pdl@ars.test"), mail_from="secretariat@chu.test")
        wait_until(lambda: smtp_sink.messages_to("secretariat@chu.test"), timeout=20)
        # The staff notification of that case is queued in the same transaction: once it arrived,
        # everything the message caused has been relayed.
        wait_until(lambda: len(smtp_sink.messages_to("agent@ars.test")) >= 2, timeout=20)
        assert not smtp_sink.messages_to("support@micros0ft-secure.test")
        assert not smtp_sink.messages_to("collecte@phish.test")
