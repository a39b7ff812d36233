"""The routing of ``processing/pipeline.py``: every kind the analysis gives has its handler."""

from __future__ import annotations

from mailgateway.mail.facts import KINDS
from mailgateway.processing import pipeline


def test_every_kind_of_message_has_one_handler() -> None:
    assert set(pipeline.HANDLERS) == set(KINDS)


def test_prehandlers_run_before_the_kind_handlers_in_a_fixed_order() -> None:
    # An establishment acknowledging a bulletin is recognised before staff authoring one by mail.
    assert [p.__name__ for p in pipeline.PREHANDLERS] == ["acknowledgement_prehandler", "bulletin_prehandler"]
