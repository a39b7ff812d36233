"""The routing of ``processing/pipeline.py``: every kind the analysis gives has its handler."""

from __future__ import annotations

from mailgateway.mail.facts import KINDS
from mailgateway.processing import pipeline


def test_every_kind_of_message_has_one_handler() -> None:
    assert set(pipeline.HANDLERS) == set(KINDS)


def test_prehandlers_run_before_the_kind_handlers_in_a_fixed_order() -> None:
    # An establishment acknowledging a bulletin is recognised before staff authoring one by mail.
    names = [p.__name__ for p in pipeline.PREHANDLERS]
    assert names.index("acknowledgement_prehandler") < names.index("bulletin_prehandler")
    # A reply or command copied to a second regional mailbox is recognised as a copy before anything acts.
    assert names[0] == "copy_prehandler"
