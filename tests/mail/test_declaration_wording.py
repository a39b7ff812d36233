"""Forms as people type them (outside tester, hospital RSSI): a misspelt label (« Gravitée »,
« Etablisement ») lost its value — the ACSS was told « non qualifiée » for « Gravitée : grave » —
and a hard-wrapped « Description : » stopped at its first line break, or at a line ending with a
colon, in the résumé sent to staff and the ACSS."""

from __future__ import annotations

import time

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.declaration import labelled_fields
from mailgateway.mail.labels import load_labels

LABELS = load_labels()


@pytest.mark.parametrize(
    ("label", "field"),
    [("Gravitée", "severity"), ("Etablisement", "structure"), ("Descrption", "summary"),
     ("Date de détéction", "detected_at"), ("Descripton de l incident", "summary")],
)
def test_a_label_one_typing_error_away_is_read(label: str, field: str) -> None:
    assert labelled_fields(f"{label} : valeur écrite\n", LABELS).values == {field: "valeur écrite"}


@pytest.mark.parametrize("label", ["Bonjour", "Cordialement", "Remarque", "Nota", "Gravités importantes"])
def test_words_that_are_no_label_stay_unread(label: str) -> None:
    assert labelled_fields(f"{label} : valeur\n", LABELS).values == {}


def test_a_hard_wrapped_description_is_read_to_its_end() -> None:
    text = ("Gravité : grave\n"
            "Description : Plusieurs serveurs ont été chiffrés cette nuit, une note de rançon\n"
            "a été trouvée ; le PACS est indisponible depuis 3h et l'IP\n"
            "203.0.113.9 a été vue.\n"
            "Mesures prises : isolement du réseau\n\nCordialement\nJean Dupont\n")
    values = labelled_fields(text, LABELS).values
    assert values["summary"] == ("Plusieurs serveurs ont été chiffrés cette nuit, une note de rançon a été trouvée ; "
                                 "le PACS est indisponible depuis 3h et l'IP 203.0.113.9 a été vue.")
    assert values["severity"] == "grave" and values["measures"] == "isolement du réseau"


def test_a_description_paragraph_keeps_its_lines_ending_with_a_colon_and_its_links() -> None:
    text = ("Description :\nLe courriel renvoie vers la page suivante :\n"
            "hxxps://evil[.]example/login et demande le mot de passe.\nGravité : significatif\n")
    values = labelled_fields(text, LABELS).values
    assert values["summary"] == ("Le courriel renvoie vers la page suivante : hxxps://evil[.]example/login "
                                 "et demande le mot de passe.")
    assert values["severity"] == "significatif"


def test_a_short_field_does_not_take_the_next_line() -> None:
    values = labelled_fields("Gravité : grave\nNous avons coupé le VPN.\n", LABELS).values
    assert values == {"severity": "grave"}


def test_near_labels_are_linear_on_hostile_text() -> None:
    text = "".join(f"Xxxxxxxx yyyy {n} : valeur\n" for n in range(2000))
    started = time.perf_counter()
    labelled_fields(text, LABELS)
    assert time.perf_counter() - started < 1.0


def _mail(sender: str, subject: str, body: str) -> bytes:
    return (f"From: {sender}\r\nTo: ssi-ara@ars-sante.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()


def test_a_free_text_summary_stops_at_the_writers_sign_off(ctx: AnalysisContext) -> None:
    # Outside tester: the résumé sent to staff and the ACSS ended « … Cordialement, Dr Paul Henry
    # Biologiste responsable ».
    body = ("Bonjour,\r\n\r\nDeux postes du laboratoire ont contacté ameli-remboursement.example hier soir, "
            "rançongiciel suspecté, nous avons isolé les postes.\r\n\r\nCordialement,\r\nDr Paul Henry\r\n"
            "Biologiste responsable\r\n")
    raw = _mail("labo@lbm.test", "Incident au laboratoire", body)
    facts = analyse(raw, ctx)
    assert facts.declaration is not None and facts.declaration.summary is not None, facts
    assert facts.declaration.summary.endswith("nous avons isolé les postes."), facts.declaration.summary
    assert "Paul Henry" not in facts.declaration.summary


def test_a_near_miss_never_fills_who_to_answer() -> None:
    # Outside tester: « Contacté : le prestataire Orange… » is one letter from « Contact » (the
    # declarant); it stays a sentence of the description.
    text = "Description : postes chiffrés\nContacté : le prestataire Orange, qui a isolé le réseau\n"
    values = labelled_fields(text, LABELS).values
    assert "declarant" not in values and "le prestataire Orange" in values["summary"], values


def test_a_leak_sent_by_mistake_is_not_malicious(ctx: AnalysisContext) -> None:
    # Outside tester: « un prestataire a envoyé par erreur un export patients » was « malveillant ».
    body = ("Bonjour,\r\n\r\nUn prestataire a envoyé par erreur un export patients à un mauvais destinataire : "
            "fuite de données de santé, 300 dossiers concernés.\r\n")
    raw = _mail("dpo@chu.test", "Fuite de données", body)
    facts = analyse(raw, ctx)
    assert facts.declaration is not None and facts.declaration.nature != "MALVEILLANT", facts.declaration


def test_the_writers_own_numbers_are_no_indicators(ctx: AnalysisContext) -> None:
    # Outside tester: a reply's signature phone, and a declaration's « Tél. » line under a signature
    # without a closing formula, were listed as indicators.
    body = ("Numéro FINESS : 690781810\r\nType d'incident : hameçonnage\r\n"
            "Description : appels frauduleux depuis le 01 99 00 55 66.\r\n\r\nSophie Martin\r\nRSSI\r\n"
            "Tél. 02 41 49 60 00\r\n")
    raw = _mail("rssi@chu.test", "Déclaration", body)
    phones = {i.value for i in analyse(raw, ctx).indicators if i.type == "phone"}
    assert phones == {"+33199005566"}, phones
