"""Korean food glossary: coverage, the documented examples, unmapped Hangul reporting."""

from __future__ import annotations

from lorastudio.captions.glossary import contains_hangul, entries, lookup, name_to_subject, translate


def test_glossary_has_at_least_100_entries_with_clean_glosses():
    table = entries()
    assert len(table) >= 100
    for hangul, entry in table.items():
        assert contains_hangul(hangul)
        assert entry.romanized and entry.romanized.isascii() and entry.gloss.isascii()
        # a comma would split the caption phrase in two
        assert "," not in entry.english
    categories = {e.category for e in table.values()}
    assert {"dishes", "ingredients", "garnishes"} <= categories


def test_documented_examples():
    assert lookup("양념치킨").english == "yangnyeom chicken (korean fried chicken in sweet spicy glaze)"
    assert lookup("떡볶이").english == "tteokbokki (spicy rice cakes)"
    assert lookup("치즈").english == "cheese"
    assert lookup("없는말") is None


def test_translate_replaces_known_and_reports_unknown():
    text, missing = translate("a photo of 양념치킨 with 깨")
    assert text == "a photo of yangnyeom chicken (korean fried chicken in sweet spicy glaze) with kkae (sesame seeds)"
    assert missing == []
    text, missing = translate("전주비빔밥 and 모르는음식")
    assert "bibimbap (rice mixed with vegetables and chili paste)" in text
    assert missing == ["전주", "모르는음식"]
    assert "모르는음식" in text and contains_hangul(text)
    assert translate("plain english") == ("plain english", [])


def test_names_to_subjects():
    assert name_to_subject("10_양념치킨") == "양념치킨"
    assert name_to_subject("떡볶이_03.jpg") == "떡볶이"
    assert name_to_subject("IMG_0042.JPG") == ""
    assert name_to_subject("kimchi-jjigae_2") == "kimchi jjigae"
