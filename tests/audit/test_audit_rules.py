"""Every text rule: one case that fires and one that does not."""

from __future__ import annotations

import pytest

from lorastudio.audit.rules import TokenBudget, build_entries, run_text_rules

T = "ohwx_kfood_style"
GOOD = f"{T}, a photo of yangnyeom chicken, close-up shot, on a white ceramic plate, black background, neutral lighting"
GOOD_SET = [
    GOOD,
    f"{T}, a photo of tteokbokki, overhead flat lay, in a black bowl, white background, soft diffused light",
    f"{T}, a photo of bibimbap, 45-degree angle, hot stone bowl (dolsot), grey background, neutral lighting",
]


def rules_for(captions, vocab, *, trigger=T, budget=None, sidecars=None):
    sidecars = sidecars if sidecars is not None else captions
    entries = build_entries(((f"img{i}", c, s) for i, (c, s) in enumerate(zip(captions, sidecars))), vocab)
    return run_text_rules(entries, vocab, trigger=trigger, budget=budget)


def fired(findings, rule):
    return [f for f in findings if f.rule == rule]


def test_clean_set_has_no_warnings_or_errors(vocab):
    findings = rules_for(GOOD_SET, vocab)
    assert [f for f in findings if f.severity != "info"] == []


@pytest.mark.parametrize("rule, bad, severity", [
    ("caption.empty", "", "error"),
    ("trigger.missing", "a photo of yangnyeom chicken, black background, neutral lighting", "error"),
    ("trigger.not_first", f"a photo of yangnyeom chicken, {T}, black background, neutral lighting", "warning"),
    ("trigger.spelling", "ohwx kfood style, a photo of yangnyeom chicken, black background, neutral lighting", "warning"),
    ("slots.order", f"{T}, a photo of yangnyeom chicken, black background, close-up shot, neutral lighting", "warning"),
    ("phrase.duplicate", f"{T}, a photo of yangnyeom chicken, black background, black background, neutral lighting", "warning"),
    ("phrase.duplicate", f"{T}, a photo of yangnyeom chicken, black background, black backdrop, neutral lighting", "warning"),
    ("phrase.contradiction", f"{T}, a photo of yangnyeom chicken, black background, white background, neutral lighting", "warning"),
    ("text.non_latin", f"{T}, a photo of борщ, black background, neutral lighting", "warning"),
])
def test_per_image_rule_fires_on_bad_caption_only(vocab, rule, bad, severity):
    findings = rules_for([bad, *GOOD_SET[1:]], vocab)
    hits = fired(findings, rule)
    assert hits and all(h.image == "img0" and h.severity == severity for h in hits)
    assert hits[0].fix
    assert fired(rules_for(GOOD_SET, vocab), rule) == []


def test_hangul_suggests_glossary_romanization(vocab):
    findings = rules_for([f"{T}, a photo of 양념치킨, black background, neutral lighting", *GOOD_SET[1:]], vocab)
    hit = fired(findings, "text.hangul")
    assert len(hit) == 1 and hit[0].image == "img0"
    assert "yangnyeom chicken (korean fried chicken" in hit[0].fix
    assert fired(rules_for(GOOD_SET, vocab), "text.hangul") == []


def test_slot_order_suggests_golden_order(vocab):
    bad = f"{T}, black background, a photo of yangnyeom chicken, close-up shot"
    hit = fired(rules_for([bad], vocab), "slots.order")[0]
    assert hit.fix.endswith(f"{T}, a photo of yangnyeom chicken, close-up shot, black background")


def test_lighting_in_objective_slot_is_not_out_of_order(vocab):
    text = f"{T}, a photo of yangnyeom chicken, close-up shot, neutral lighting, black background, glossy"
    assert fired(rules_for([text], vocab), "slots.order") == []


def test_sidecar_missing_and_stale(vocab):
    findings = rules_for(GOOD_SET, vocab, sidecars=[None, "something else", GOOD_SET[2]])
    assert [f.image for f in fired(findings, "sidecar.missing")] == ["img0"]
    assert [f.image for f in fired(findings, "sidecar.stale")] == ["img1"]
    assert fired(rules_for(GOOD_SET, vocab), "sidecar.missing") == []


def test_identical_captions(vocab):
    hits = fired(rules_for([GOOD] * 3 + GOOD_SET[1:], vocab), "captions.identical")
    assert len(hits) == 1 and "3 images" in hits[0].message
    assert fired(rules_for(GOOD_SET, vocab), "captions.identical") == []


def test_lighting_never_described(vocab):
    unlit = [c.replace(", neutral lighting", "").replace(", soft diffused light", "") for c in GOOD_SET]
    hits = fired(rules_for(unlit, vocab), "lighting.missing")
    assert len(hits) == 1 and hits[0].image is None and "neutral lighting" in hits[0].fix
    assert fired(rules_for(GOOD_SET, vocab), "lighting.missing") == []


def test_style_constant_needs_ninety_percent(vocab):
    glossy = [c + ", glossy" for c in GOOD_SET] * 4  # 12/12 captions
    hits = fired(rules_for(glossy, vocab), "style.constant")
    assert [h.severity for h in hits] == ["info"] and "glossy" in hits[0].message
    half = [c + (", glossy" if i % 2 else "") for i, c in enumerate(GOOD_SET * 4)]
    assert fired(rules_for(half, vocab), "style.constant") == []


def test_neutral_lighting_everywhere_is_not_a_style_constant(vocab):
    assert fired(rules_for([GOOD] * 10, vocab), "style.constant") == []


def test_unknown_trigger_is_an_info_not_an_error(vocab):
    findings = rules_for(GOOD_SET, vocab, trigger=None)
    assert [f.rule for f in findings if f.rule.startswith("trigger")] == ["trigger.unknown"]


def test_token_budget_exact_and_approximate(vocab):
    from lorastudio.captions.tokens import load_tokenizers
    from lorastudio.models.tiny import tokenizer_files_dir

    tokenizers = load_tokenizers(tokenizer_files_dir())
    long = GOOD + ", " + ", ".join(["sprinkled with sesame seeds, chopped green onions, sauce drizzle"] * 6)
    exact = rules_for([long, GOOD], vocab, budget=TokenBudget(tokenizers, approximate=False, source="x"))
    over = fired(exact, "tokens.over_budget")
    assert [(f.image, f.severity) for f in over] == [("img0", "warning")]
    assert fired(exact, "tokens.approximate") == []
    approx = rules_for([long, GOOD], vocab, budget=TokenBudget(tokenizers, approximate=True, source="tiny"))
    assert [(f.image, f.severity) for f in fired(approx, "tokens.over_budget")] == [("img0", "info")]
    assert "about" in fired(approx, "tokens.over_budget")[0].message
    assert len(fired(approx, "tokens.approximate")) == 1
    assert [f.rule for f in rules_for([GOOD], vocab, budget=None) if f.rule.startswith("tokens")] == ["tokens.skipped"]


def test_sidecar_and_exact_tokens_through_audit_dataset(text_dataset, vocab):
    from lorastudio.audit import audit_dataset
    from lorastudio.models.tiny import tokenizer_files_dir

    ds = text_dataset(GOOD_SET)
    (ds / "images" / "img001.txt").unlink()
    result = audit_dataset(ds, vocab=vocab, pixel=False, tokenizer_dir=tokenizer_files_dir())
    assert [(f.image, f.severity) for f in fired(result.findings, "sidecar.missing")] == [("img001", "error")]
    assert fired(result.findings, "tokens.approximate") == [] and result.has_errors
    assert result.findings[0].severity == "error"
    default = audit_dataset(text_dataset(GOOD_SET), vocab=vocab, pixel=False)
    assert len(fired(default.findings, "tokens.approximate")) == 1 and not default.has_errors


def test_trigger_inferred_when_dataset_json_has_none(text_dataset, vocab):
    from lorastudio.audit import audit_dataset

    ds = text_dataset([*GOOD_SET, GOOD.replace(T, "OHWX-kfood-style")], trigger=None)
    result = audit_dataset(ds, vocab=vocab, pixel=False)
    assert result.facts["trigger"] == T
    assert len(fired(result.findings, "trigger.inferred")) == 1
    assert [f.image for f in fired(result.findings, "trigger.spelling")] == ["img003"]
    plain = audit_dataset(text_dataset(["a photo of kimchi, black background"] * 2, trigger=None), vocab=vocab, pixel=False)
    assert plain.facts["trigger"] is None and len(fired(plain.findings, "trigger.unknown")) == 1
