"""The mbox splitter loses no message, including unescaped "From " body lines."""

from __future__ import annotations

from mailgateway.mail.mbox import split_mbox

UNMUNGED = (
    b"\xef\xbb\xbfFrom -\n"
    b"From: a@example.test\nSubject: one\n\nMy favourite film:\n\nFrom Russia with love\n\nWhat now?\n\n"
    b"From -\n"
    b"From: a@example.test\nSubject: two\n\nMy favourite film:\n\nFrom Russia with love\nYear: 1963\n\nAgain?\n"
)


def test_unescaped_from_lines_in_bodies_do_not_split_messages() -> None:
    messages = split_mbox(UNMUNGED)
    assert len(messages) == 2
    assert b"From Russia with love\n\nWhat now?" in messages[0]
    assert messages[1].startswith(b"From: a@example.test\nSubject: two")
    assert b"Year: 1963" in messages[1]


def test_separator_with_date_and_address_splits() -> None:
    data = (
        b"From MAILER-DAEMON Thu Dec 22 17:54:04 2015\nFrom: x@y.test\n\nbody\n\n"
        b"From jane@example.test Fri Dec 23 10:00:00 2015\nSubject: b\n\nbody2\n"
    )
    assert split_mbox(data) == [b"From: x@y.test\n\nbody\n", b"Subject: b\n\nbody2\n"]


def test_a_plain_message_is_one_item() -> None:
    assert split_mbox(b"Subject: x\n\nFrom here on\n") == [b"Subject: x\n\nFrom here on\n"]
