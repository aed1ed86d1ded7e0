"""Content fingerprints find shared passages without the content, and argument digests ignore trivia."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents_contract import canonical_digest, fingerprints, similarity, sketch
from agents_contract._fingerprint import _NOT_WORD, _words

_VOCABULARY = [f"w{i}" for i in range(5000)]


def words(seed: int, n: int) -> list[str]:
    """`n` pseudo-random words; different seeds give (almost surely) unrelated texts."""
    return random.Random(seed).choices(_VOCABULARY, k=n)


PASSAGE = " ".join(words(1, 30))


def test_equal_texts_give_equal_fingerprints() -> None:
    text = " ".join(words(2, 200))
    assert fingerprints(text) == fingerprints(text)
    assert fingerprints(text)


def test_a_passage_inside_a_longer_text_shares_a_fingerprint_with_the_passage_alone() -> None:
    longer = " ".join([*words(3, 40), PASSAGE, *words(4, 50)])
    assert set(fingerprints(PASSAGE)) & set(fingerprints(longer))


def test_a_passage_copied_into_two_different_texts_shares_a_fingerprint() -> None:
    first = " ".join([*words(5, 20), PASSAGE, *words(6, 20)])
    second = " ".join([*words(7, 45), PASSAGE])
    assert set(fingerprints(first)) & set(fingerprints(second))


def test_unrelated_texts_share_no_fingerprint() -> None:
    assert not set(fingerprints(" ".join(words(8, 300)))) & set(fingerprints(" ".join(words(9, 300))))


def test_case_spacing_and_punctuation_do_not_matter() -> None:
    text = "The patient's card number is 4111 and her address is 12 Elm Street, Springfield"
    reformatted = "  the PATIENTS card\nnumber is 4111;  and her address is\t12 elm street springfield!"
    assert fingerprints(text) == fingerprints(reformatted)
    # A changed word is a different text (with window 1 every shingle is kept, so the change must show).
    assert fingerprints(text.replace("Elm", "Oak"), window=1) != fingerprints(text, window=1)


def test_unicode_compatibility_forms_normalise_to_the_same_fingerprints() -> None:
    plain = "the final office file is on the shelf near the window"
    compatibility = plain.replace("fi", "\ufb01").replace("ffi", "\ufb03").upper()
    assert fingerprints(compatibility) == fingerprints(plain)


def test_short_texts_give_one_fingerprint_from_four_words_and_none_below() -> None:
    assert fingerprints("a card number") == []
    assert fingerprints("") == []
    (single,) = fingerprints("her card number 4111")
    assert fingerprints("Her card NUMBER, 4111.") == [single]


def test_limit_is_respected_and_keeps_the_same_sample_for_the_same_content() -> None:
    text = " ".join(words(10, 3000))
    assert len(fingerprints(text)) == 64
    assert len(fingerprints(text, limit=5)) == 5
    assert fingerprints(text, limit=0) == []
    # The cap keeps the smallest values, so a larger cap only adds to a smaller one.
    assert set(fingerprints(text, limit=5)) <= set(fingerprints(text, limit=64))


def test_limits_beyond_the_contract_are_refused() -> None:
    with pytest.raises(ValueError, match="512"):
        fingerprints("a b c d", limit=513)
    with pytest.raises(ValueError, match="at least 1"):
        fingerprints("a b c d", shingle=0)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.text(max_size=2000),
    st.integers(1, 12),
    st.integers(1, 8),
    st.integers(0, 512),
)
def test_fingerprints_never_raise_and_stay_within_the_contract(
    text: str, shingle: int, window: int, limit: int
) -> None:
    prints = fingerprints(text, shingle=shingle, window=window, limit=limit)
    assert len(prints) <= limit
    assert len(set(prints)) == len(prints)
    assert all(isinstance(p, int) and 0 <= p <= 2**64 - 1 for p in prints)


@settings(deadline=None)
@given(
    st.lists(st.sampled_from(_VOCABULARY[:50]), max_size=60),
    st.lists(st.sampled_from(_VOCABULARY[:50]), min_size=11, max_size=40),
    st.lists(st.sampled_from(_VOCABULARY[:50]), max_size=60),
)
def test_any_shared_passage_of_shingle_plus_window_minus_one_words_shares_a_fingerprint(
    before: list[str], passage: list[str], after: list[str]
) -> None:
    # 11 = shingle 8 + window 4 - 1: the winnowing guarantee, whatever surrounds the passage.
    alone = fingerprints(" ".join(passage), limit=512)
    embedded = fingerprints(" ".join([*before, *passage, *after]), limit=512)
    assert set(alone) & set(embedded)


def test_no_fingerprint_carries_the_words() -> None:
    text = "alice smith 4111111111111111 lives at 12 elm street springfield and owes 300 dollars"
    body = " ".join(str(p) for p in fingerprints(text))
    assert not re.search(r"alice|4111111111111111|elm", body)


def test_canonical_digest_ignores_key_order_list_order_spacing_case_and_empty_values() -> None:
    base = canonical_digest({"query": "Weather in Paris", "tags": ["a", "b"], "page": 2})
    assert base == canonical_digest({"page": 2, "tags": ["b", "a"], "query": "weather  in\tparis "})
    assert base == canonical_digest(
        {"query": "WEATHER IN PARIS", "tags": ["B", "A"], "page": 2.0, "lang": None, "filter": {}, "x": ""}
    )
    assert base == canonical_digest({"query": "weather in paris", "tags": ("a", "b"), "page": 2, "ids": []})
    nested = canonical_digest({"f": {"a": [{"y": 1, "x": 2}, {"z": None}]}})
    assert nested == canonical_digest({"f": {"a": [{}, {"x": 2, "y": 1}]}})


def test_canonical_digest_differs_for_different_arguments() -> None:
    base = canonical_digest({"query": "weather in paris", "page": 2})
    assert base != canonical_digest({"query": "weather in lyon", "page": 2})
    assert base != canonical_digest({"query": "weather in paris", "page": 3})
    assert base != canonical_digest({"q": "weather in paris", "page": 2})
    assert base != canonical_digest({"query": "weather in paris", "page": 2, "lang": "fr"})
    assert canonical_digest([1, 2]) != canonical_digest([1, 2, 2])
    assert canonical_digest({"n": 0}) != canonical_digest({"n": False})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_canonical_digest_never_raises_and_is_stable(value: object) -> None:
    result = canonical_digest(value)
    assert re.fullmatch(r"[0-9a-f]{32}", result)
    assert canonical_digest(value) == result


def test_a_long_text_gives_the_same_fingerprints_however_it_is_cut() -> None:
    # Normalised in 4 KB pieces cut at whitespace not followed by a combining mark (here a space before a
    # combining acute, which NFKC would otherwise join differently), in a thread that yields: same numbers.
    rng = random.Random(7)
    text = " ".join(
        "".join(rng.choice("abcé,Ü.\u0301") for _ in range(rng.randint(1, 12))) for _ in range(20_000)
    )
    whole = _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold()).split()
    assert _words(text) == whole
    assert fingerprints(text, cooperative=True) == fingerprints(text)


# Similarity sketches of arguments and messages


def test_a_reworded_query_is_alike_and_an_unrelated_one_is_not() -> None:
    first = sketch({"q": "cheapest flights lisbon to porto in may"})
    assert first is not None
    assert len(first) == 66
    for reworded in ("lisbon porto flight cheap may dates", "cheap flights from lisbon to porto, may"):
        assert similarity(first, sketch({"q": reworded}) or "") >= 0.3
    for other in ("quarterly revenue of the northern region", "python install numpy on windows"):
        assert similarity(first, sketch({"q": other}) or "") < 0.15


def test_space_free_values_are_whole_features_and_numbers_tell_short_requests_apart() -> None:
    # Another file is another call, not a rewording of the same one.
    assert similarity(sketch({"path": "src/lexer.py"}) or "", sketch({"path": "src/parser.py"}) or "") == 0
    # Page 2 of a listing is other data than page 3, as a number or in the text.
    page = [sketch({"q": "open orders for acme", "page": n}) or "" for n in (2, 3)]
    assert similarity(*page) == 0
    section = [sketch(f"summarise section {n} of the report") or "" for n in (3, 4)]
    assert similarity(*section) == 0
    # Code is no short request: a script rewritten with other numbers is the same exploration.
    script = "import pandas as pd\ndf = pd.read_csv('orders.csv')\nprint(df.groupby('month').sum())\n"
    script += "print(df.head({}))"
    assert (
        similarity(sketch({"code": script.format(5)}) or "", sketch({"code": script.format(20)}) or "") > 0.5
    )
    # The same numbers, or none on one side, compare as usual.
    assert (
        similarity(sketch("summarise section 3 of the report") or "", sketch("section 3: summarise it") or "")
        > 0.3
    )
    assert similarity(sketch("cheap flights in 2025") or "", sketch("cheap flights") or "") > 0.3


def test_sketches_of_nothing_and_of_another_form_compare_as_nothing() -> None:
    assert sketch({}) is None
    assert sketch({"a": None, "b": [True]}) is None
    one = sketch("some text") or ""
    assert similarity(one, one) == 1.0
    assert similarity(one, "zz" + one[2:]) == 0.0
    assert similarity(one, one[:-2]) == 0.0
    assert similarity(one, "not hex at all, but 66 characters long............................") == 0.0


def test_long_values_cost_a_bounded_sketch() -> None:
    code = "\n".join(f"def f{n}(x):\n    return x * {n} + helper_{n}(x)" for n in range(2_000))
    assert len(code) > 50_000
    assert sketch(code) == sketch(code + "\n# more code beyond the part a sketch reads")
