"""Case references are found in threads and in mangled subject tags."""

from __future__ import annotations

import pytest

from mailgateway.mail.refs import find_ref, strip_prefixes, thread_case


@pytest.mark.parametrize(
    "subject",
    [
        "RE: [SSI-ARA-2026-0042] Accusé de réception",
        "TR: Fwd: AW: [SSI-ARA-2026-0042]",
        "RE: [SSI- ARA-2026-0042] suite",
        "SSI_ARA_2026_0042 compléments",
        "ssi-ara-2026-42",
        "Réf. SSI ARA 2026 0042",
    ],
)
def test_mangled_subject_tags_are_canonicalised(subject: str) -> None:
    assert find_ref(subject) == "SSI-ARA-2026-0042"


def test_words_containing_ssi_are_not_references() -> None:
    assert find_ref("CLASSIC-ARA-2026-0042") is None


def test_prefixes_are_stripped() -> None:
    assert strip_prefixes("RE: TR: Fwd: AW: #statut SSI-ARA-2026-0001") == "#statut SSI-ARA-2026-0001"


def test_thread_lookup_wins_over_the_subject() -> None:
    ref, how = thread_case(["m1@x"], "[SSI-ARA-2026-0001]", lambda ids: "SSI-PDL-2026-0007", ())
    assert (ref, how) == ("SSI-PDL-2026-0007", "thread")


def test_reference_in_our_own_message_id_is_a_last_resort() -> None:
    ref, how = thread_case(
        ["ack.SSI-ARA-2026-0007@ars-sante.test"], "Re: bonjour", lambda ids: None, ["ars-sante.test"]
    )
    assert (ref, how) == ("SSI-ARA-2026-0007", "message-id")


def test_reference_in_a_foreign_message_id_is_ignored() -> None:
    assert thread_case(["SSI-ARA-2026-0007@evil.test"], "Re: x", lambda ids: None, ["ars-sante.test"]) == (None, None)
