"""Courtesy is recognised as a formula, not as one of a fixed list of phrases (outside test,
hospital RSSI): « Merci beaucoup pour votre aide et votre réactivité. Bonne soirée, » reopened a
closed serious case and told the hospital « votre dossier a été rouvert »; « Merci pour votre
aide. » to a relayed alert notified staff. Content must still never pass for a courtesy."""

from __future__ import annotations

import time

import pytest

from mailgateway.mail.courtesy import is_courtesy
from mailgateway.mail.labels import load_labels

LABELS = load_labels()

COURTESY = [
    "Merci beaucoup pour votre aide et votre réactivité.\n\nBonne soirée,",
    "Merci pour votre aide.",
    "Bien reçu, merci.",
    "Bien reçu, merci.\n\nCordialement,\nJean Dupont",
    "Merci infiniment pour votre réactivité !",
    "Merci bien pour l'information. Bonne journée",
    "Merci de votre retour, bonne fin de journée.",
    "Merci pour le partage de l'alerte.",
    "Très bien noté, merci.",
    "Parfait, merci !",
    "Bien noté. Cordialement",
    "C'est noté, merci beaucoup.",
    "Merci à vous, bonne semaine.",
    "Un grand merci pour votre accompagnement.",
    "Mille mercis pour votre soutien",
    "Je vous remercie pour votre retour rapide.",
    "Nous vous remercions pour l'information.",
    "Encore merci pour tout, bonne soirée.",
    "Merci, bon week-end",
    "Bien à vous",
    "Bien cordialement,\nMarie Exemple\nRSSI",
    "Merci pour votre réponse rapide et précise.",
    "Merci pour ces informations précieuses.",
    "Bonne fin de semaine à vous.",
    "Je reste à votre disposition. Cordialement",
    "Bien reçu, je vous remercie. Bonne journée.",
    "Accusé de réception, merci.",
    "Merci pour votre vigilance, bonne continuation.",
    "OK, merci.",
    "Merci pour votre diligence.",
    "Merci pour le relais de l'alerte, cordialement",
    "Merci Madame, bonne journée",
    "Merci beaucoup pour votre disponibilité et votre professionnalisme.\nBonne soirée,\nClaire Martin\n"
    "RSSI - CHU de Test\nTél. 04 72 00 00 00",
    "Thanks a lot, best regards",
    "Merci pour le retour, très bonne journée à vous",
    "Merci à toute l'équipe pour votre travail.",
    "Merci pour l'info !",
    "Merci pour votre mail, bien reçu",
    "Bonjour,\n\nBien reçu et bien pris en compte.\n\nBien cordialement,",
    "Merci, bonne soirée et bon courage à vous",
    # Signed with a job title, two numbers on a line, a phone's sign-off (outside tester: each
    # reopened a closed case, or notified staff of a « #lu » on a bulletin).
    "Merci beaucoup, bonne journée.\nSophie Martin\nResponsable de la sécurité des systèmes d'information\n"
    "Centre hospitalier de Cholet\nTél : 02 41 49 60 00",
    "Merci.\nPaul Henry\nChargée de mission SSI\nTél. 02 41 49 60 00 – Port. 06 12 34 56 78",
    "#lu\n\nEnvoyé de mon iPhone",
    "#lu\nSophie Martin\nResponsable de la sécurité des systèmes d'information",
    "Merci.\nJean-Pierre DUPONT\nRSSI – GHT Loire Atlantique\nTél. +33 2 40 08 33 33",
    "Bien reçu, merci.\nDr Paul Henry\nBiologiste responsable",
    "Merci,\nJ. Dupont\nRSSI", "Merci,\nM. Dupont\nIngénieur sécurité", "Merci.\nIngénieure sécurité SI",
    "Merci.\nSophie Martin\nTél. direct : 02 40 08 33 33", "Thanks,\nJohn Smith\nCISO\nPhone: +44 20 7946 0958",
    "Merci.\nJean DUPONT\nRSSI – CHU DE NANTES", "Merci.\nPaul Henry\nMail : paul.henry@chu.test",
    # Ordinary signatures that reopened closed cases (noise): an address, more titles, English, seven lines.
    "Merci, bonne journée.\nJeanne Martin\nCHU de Nantes\n5 allée de l'île Gloriette\n44093 Nantes Cedex 1",
    "Merci.\nJean Dupont\nIngénieur biomédical", "Thanks,\nJohn Smith\nHead of Information Security",
    "Merci.\nMarie Durand\nDirectrice des soins",
    "Merci.\nPaul Henry\nCHU de Nantes\n5 bis rue Victor Hugo\nBP 1005\n44093 Nantes Cedex 1",
    "Merci.\nSophie Martin\nRSSI\nDirection des systèmes d'information\nCHU de Nantes\nTél. 02 40 08 33 33\n"
    "Mail : s.martin@chu-nantes.fr",
]

NOT_COURTESY = [
    "merci de nous rappeler, le serveur est toujours chiffré",
    "merci, nous avons aussi reçu le fax",
    "Merci, pouvez-vous nous rappeler ?",
    "Merci. L'adresse 203.0.113.45 est bloquée.",
    "Merci, voir https://example.org/x",
    "Merci pour votre aide, le chiffrement a repris.",
    "Bien reçu, nous coupons le VPN.",
    "Merci de nous envoyer la procédure",
    "Merci, nous avons été attaqués cette nuit",
    "Merci pour l'alerte rançongiciel",
    "Pas bien reçu, le message était vide",
    "Merci, c'est fait sur 3 serveurs",
    "Merci pour votre aide, mais le problème persiste",
    "Bonne journée, le serveur PACS est à l'arrêt",
    "Merci beaucoup pour votre aide et votre réactivité, mais nous avons encore des postes chiffrés",
    "Merci de rappeler le 04 72 00 00 00",
    "Merci pour votre aide " * 20,
    "Cordialement, contactez-moi au plus vite",
    "Merci. Un autre établissement est touché.",
    "Merci pour l'information, nous sommes aussi concernés",
    "Merci pour votre retour rapide. Et pour le poste 12",
    "Merci, 203.0.113.45",
    "Merci, www.exemple-fuite.fr",
    "Bonne nouvelle : nous avons retrouvé les sauvegardes",
    "Merci, nous ne sommes pas concernés",
    "Merci pour votre aide.\nLe serveur est toujours chiffré.",
    "Merci.\nLe service informatique est toujours à l'arrêt",
    "Merci.\nTél. 02 41 49 60 00 – rappelez vite",
    # Content under a « Merci. » that reads like a signature line (outside tester, second round).
    "Merci.\nNOUS N'AVONS PLUS ACCÈS AU DOSSIER PATIENT",
    "Merci.\nURGENT RAPPELEZ LE STANDARD",
    "Merci.\nNous N'avons Plus Accès Au Dossier Patient",
    "Merci.\nEnvoyé de mon iPhone, le DPI ne répond plus depuis 10 minutes",
    "Merci.\nEnvoyé depuis le mobile : plus aucun accès au DPI",
    "Merci.\n10.12.4.7 - 10.12.4.8",
    "Merci.\n198.51.100.99",
    "Merci.\nPanne Générale Du Serveur PACS",
    # Third round: a sighting, a short status report, text after a phone's sign-off.
    "Merci.\n(203.0.113.45)", "Merci.\n203.0.113.45.", "Merci.\n203.0.113.0/24",
    "Merci.\nReçu de admin@vpn-update.example", "Merci.\nLe DPI à l'arrêt", "Merci.\nL'automate de biologie à l'arrêt",
    "Merci.\nRéseau HS", "Merci.\nÇA RECOMMENCE CE MATIN", "Bien reçu, merci.\nEnvoyé de mon iPhone. DPI HS",
    "Thanks.\nSent from my iPhone. Servers down again", "Merci.\nEnvoyé de mon mobile car plus de messagerie",
    # Fourth round: a one-word status, a system's name, emojis, a request in thanks' words, a sighting.
    "Merci.\nImpactés", "Thanks.\nAffected", "Merci.\nMessagerie ❌\nDPI ❌", "Merci.\nPACS : OFF",
    "Thanks.\nEmail Server Compromised", "Merci.\nMode Dégradé", "Merci.\nSRV-PACS", "Merci.\nDPI Crossway",
    "Merci.\nUs Too", "Merci d'une intervention rapide", "Merci d'un appel au service", "OK pour l'intervention",
    "D'accord pour l'appel", "Nous aussi reçu ce mail", "Reçu également ce courriel", "Encore reçu ce message",
    "Plus reçu de mail", "Merci.\n06 12 34 56 78", "Merci.\nPoste 4521",
    "Merci.\n12 rue bloquée ce matin", "Merci.\n44000 Nantes chiffré", "Merci.\n12 rue des Lilas inondée",
    "Merci.\nUrgences fermées", "Merci.\nHead Office Down",
]


@pytest.mark.parametrize("text", COURTESY)
def test_real_world_courtesy_formulas_are_courtesy(text: str) -> None:
    assert is_courtesy(text, 0, LABELS), text


@pytest.mark.parametrize("text", NOT_COURTESY)
def test_near_misses_are_substantive(text: str) -> None:
    assert not is_courtesy(text, 0, LABELS), text


def test_the_tables_are_large_enough() -> None:
    assert len(COURTESY) >= 30 and len(NOT_COURTESY) >= 15


def test_courtesy_detection_is_linear_on_hostile_text() -> None:
    """Bounded work whatever the reply (docs/guarantees.md, "poison message")."""
    for hostile in ("merci " * 20_000, ",".join(["merci"] * 20_000), "a" * 100_000, "merci\n" * 20_000,
                    ("merci pour votre aide et " * 5000) + "?"):
        start = time.perf_counter()
        is_courtesy(hostile, 0, LABELS)
        assert time.perf_counter() - start < 0.5
