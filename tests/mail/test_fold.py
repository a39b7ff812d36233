"""``mail.text.fold``: accents removed and case folded, as NFKD without combining marks then
``casefold`` (the reference below); its faster path for Latin text (issue 19) changes nothing."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.mail.text import fold, normalise


def reference(text: str) -> str:
    if text.isascii():
        return text.lower()
    text = text.replace("œ", "oe").replace("Œ", "OE").replace("æ", "ae").replace("Æ", "AE")
    text = text.replace("’", "'").replace("ʼ", "'")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


# Latin letters with and without accents, loose combining marks (the grapheme joiner U+034F among
# them: combining class 0, kept), and a few other scripts and compatibility characters.
_CHARS = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x24F),
    st.characters(min_codepoint=0x300, max_codepoint=0x36F),
    st.sampled_from(["\u034f", "\u1e9e", "\ufb01", "\u2126", "\u212b", "\u03a3", "\u05d0", "\u065e", "\u093f",
                     "\uac00", "\u3042", "\u309a", "\uff21", "\U0001f600", "œ", "Æ", "’"]),
)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=_CHARS, max_size=12))
def test_fold_is_nfkd_without_combining_marks_then_casefold(text: str) -> None:
    assert fold(text) == reference(text)


def test_french_words_fold_to_their_letters() -> None:
    assert fold("Numéro FINESS géographique") == "numero finess geographique"
    assert normalise("Œuvre d’établissement : ÇA") == "oeuvre d etablissement ca"
    assert fold("a\u034fb") == "a\u034fb"  # the grapheme joiner is no accent
