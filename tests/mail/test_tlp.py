"""TLP markings fail closed (docs/guarantees.md): one parser, exact French labels, unknown → AMBER+STRICT."""

from __future__ import annotations

import pytest

from mailgateway.bulletins.by_mail import _tlp_line
from mailgateway.bulletins.fanout import BulletinError, check_tlp
from mailgateway.mail import tlp
from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import SenderVerdict
from tests.support.messages import ACSS_ADDRESS, make_alert

ACSS = SenderVerdict(address=ACSS_ADDRESS, domain="esante.gouv.fr", authenticated=True, method="dkim",
                     auth_domain="esante.gouv.fr")


@pytest.mark.parametrize(("written", "label"), [
    ("TLP:CLEAR", "CLEAR"), ("TLP:WHITE", "CLEAR"), ("TLP:BLANC", "CLEAR"), ("TLP : blanc", "CLEAR"),
    ("TLP:GREEN", "GREEN"), ("TLP:VERT", "GREEN"),
    ("TLP:AMBER", "AMBER"), ("TLP:AMBRE", "AMBER"),
    ("TLP:AMBER+STRICT", "AMBER+STRICT"), ("TLP:AMBRE+STRICT", "AMBER+STRICT"), ("TLP: ambre + strict", "AMBER+STRICT"),
    ("TLP:AMBER STRICT", "AMBER+STRICT"), ("TLP=AMBER+STRICT", "AMBER+STRICT"),
    ("TLP:RED", "RED"), ("TLP:ROUGE", "RED"), ("[TLP:ROUGE]", "RED"),
])
def test_known_labels_map_exactly(written: str, label: str) -> None:
    markings = tlp.find_markings(f"Objet {written} suite")
    assert [(m.label, m.known) for m in markings] == [(label, True)]


@pytest.mark.parametrize("written", [
    "TLP:PURPLE", "TLP: ???", "TLP:", "TLP:CLEAR-ish", "TLP:GREEN2", "TLP:AMBER+STRICT+CLEAR", "TLP ROSE",
    "TLP:AMBER/CLEAR",
])
def test_unknown_or_unparsed_markings_are_amber_strict_with_the_raw_text(written: str) -> None:
    (marking,) = tlp.find_markings(f"Alerte {written}\nsuite")
    assert marking.label == "AMBER+STRICT" and not marking.known
    assert marking.raw and marking.raw in written + "\nsuite"


def test_prose_mentioning_tlp_is_not_a_marking() -> None:
    assert tlp.find_markings("Le protocole TLP définit des niveaux ; voir TLP 2.0 de FIRST.") == []


def test_the_strictest_marking_of_a_text_wins() -> None:
    found = tlp.find_markings("[TLP:CLEAR] Alerte\nExtrait TLP:RED ci-dessous\nTLP:PURPLE")
    chosen = tlp.strictest(found)
    assert chosen is not None and chosen.label == "RED"


@pytest.mark.parametrize(("stored", "label"), [
    (None, "AMBER+STRICT"), ("PURPLE", "AMBER+STRICT"), ("", "AMBER+STRICT"), ("WHITE", "CLEAR"),
    ("AMBRE+STRICT", "AMBER+STRICT"), ("GREEN", "GREEN"), ("RED", "RED"),
])
def test_relay_label_fails_closed(stored: str | None, label: str) -> None:
    assert tlp.relay_label(stored) == label


# -- alerts as analysed --------------------------------------------------------------------------
@pytest.mark.parametrize(("marking", "label", "known"), [
    ("TLP:AMBRE+STRICT", "AMBER+STRICT", True),  # the old regex read AMBER
    ("TLP:PURPLE", "AMBER+STRICT", False),        # the old regex found nothing: relayed as CLEAR
    ("TLP: ???", "AMBER+STRICT", False),
    ("TLP:ROUGE", "RED", True),
    ("TLP:VERT", "GREEN", True),
    ("TLP:BLANC", "CLEAR", True),
])
def test_alert_tlp_is_read_exactly_and_fails_closed(ctx: AnalysisContext, marking: str, label: str,
                                                    known: bool) -> None:
    alert = analyse(make_alert(tlp=marking), ctx, ACSS).alert
    assert alert is not None
    assert (alert.tlp, alert.tlp_known) == (label, known)
    assert alert.tlp_marking is not None and marking.partition(":")[2].strip() in alert.tlp_marking
    assert alert.to_json()["tlp_marking"] == alert.tlp_marking


def test_an_alert_without_marking_is_amber_strict_and_says_so(ctx: AnalysisContext) -> None:
    raw = make_alert(tlp="Diffusion aux établissements concernés", subject="Alerte - Vulnérabilité CERTFR-2026-ALE-012")
    alert = analyse(raw, ctx, ACSS).alert
    assert alert is not None and alert.tlp == "AMBER+STRICT" and alert.tlp_marking is None


def test_a_labelled_field_that_is_no_tlp_label_fails_closed(ctx: AnalysisContext) -> None:
    raw = make_alert(tlp="Niveau de diffusion : restreint", subject="Alerte - Vulnérabilité CERTFR-2026-ALE-012")
    alert = analyse(raw, ctx, ACSS).alert
    assert alert is not None and alert.tlp == "AMBER+STRICT" and alert.tlp_marking == "restreint"


def test_a_clear_subject_does_not_lift_a_stricter_body_marking(ctx: AnalysisContext) -> None:
    raw = make_alert(tlp="TLP:AMBRE+STRICT", subject="[TLP:CLEAR] Alerte - Vulnérabilité")
    alert = analyse(raw, ctx, ACSS).alert
    assert alert is not None and alert.tlp == "AMBER+STRICT"


# -- operator input: bulletins by CLI and by mail ---------------------------------------------------
@pytest.mark.parametrize(("typed", "label"), [
    (None, "CLEAR"), ("clear", "CLEAR"), ("TLP:WHITE", "CLEAR"), ("BLANC", "CLEAR"), ("vert", "GREEN"),
    ("AMBRE", "AMBER"), ("AMBRE+STRICT", "AMBER+STRICT"), ("amber strict", "AMBER+STRICT"),
])
def test_operator_labels(typed: str | None, label: str) -> None:
    assert check_tlp(typed) == label


@pytest.mark.parametrize("typed", ["PURPLE", "AMBRE-ish", "", "???", "ROUGE", "RED"])
def test_unknown_or_red_operator_labels_are_refused(typed: str) -> None:
    with pytest.raises(BulletinError):
        check_tlp(typed)


@pytest.mark.parametrize(("line", "value"), [
    ("#tlp AMBRE+STRICT", "AMBRE+STRICT"), ("# TLP : vert", "vert"), ("TLP:AMBER", "AMBER"),
    ("#tlp AMBRE-STRICT", "AMBRE-STRICT"), ("#tlp ???", "???"), ("#tlp", ""),
    ("#tlpx", None), ("Texte du bulletin", None), ("#cible all", None),
])
def test_bulletin_tlp_lines(line: str, value: str | None) -> None:
    assert _tlp_line(line) == value


def test_a_bulletin_tlp_line_that_is_not_a_label_is_refused_not_sent_as_clear() -> None:
    # Before: "#tlp AMBRE-STRICT" did not match the TLP line pattern, was dropped as a command
    # line, and the bulletin went out as CLEAR.
    written = _tlp_line("#tlp AMBRE-ST")
    with pytest.raises(BulletinError, match="TLP inconnu"):
        check_tlp(written)
