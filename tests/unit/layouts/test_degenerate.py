"""The one wrapper of the official 縮退 maps (jntajis-python)."""

from kei_gateway.layouts.degenerate import Degeneration, degenerate_char, degenerate_text


def test_when_a_character_has_one_jisx0208_candidate_then_it_becomes_that_candidate() -> None:
    assert degenerate_char("髙") == "高"
    assert degenerate_char("𠮷") == "吉"
    assert degenerate_char("﨑") == "崎"


def test_when_a_character_is_already_jisx0208_then_it_is_unchanged() -> None:
    assert degenerate_char("高") == "高"
    assert degenerate_text("高橋") == ("高橋", [], [])


def test_when_a_name_holds_variants_then_each_replacement_is_listed_with_its_place() -> None:
    text, done, unresolved = degenerate_text("髙橋𠮷田")
    assert text == "高橋吉田"
    assert done == [Degeneration(0, "髙", "高"), Degeneration(2, "𠮷", "吉")]
    assert unresolved == []


def test_when_an_ideographic_variation_selector_follows_then_it_is_dropped_with_the_variant() -> None:
    text, done, _ = degenerate_text("葛\U000e0100飾")
    assert text == "葛飾"
    assert done == [Degeneration(0, "葛\U000e0100", "葛")]


def test_when_no_map_gives_a_candidate_then_the_character_is_reported_unresolved() -> None:
    assert degenerate_char("\ue000") is None  # private use: in no map
    text, done, unresolved = degenerate_text("田\ue000")
    assert text == "田\ue000" and done == [] and unresolved == [1]
