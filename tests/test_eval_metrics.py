"""Each metric against hand-computed values; ROUGE-L and BLEU against the reference packages."""

from __future__ import annotations

import math

import pytest

from slmops.evaluate import metrics as m
from slmops.evaluate.scoring import score_outputs

LABELS = ("billing", "technical", "account", "other")
NLI = ("entailment", "neutral", "contradiction")


# -- classification ------------------------------------------------------------------------
def test_accuracy_macro_f1_and_confusion_by_hand():
    golds = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "b", None]
    assert m.accuracy(preds, golds) == pytest.approx(3 / 5)
    # a: tp1 fp0 fn1 -> 2/3; b: tp2 fp1 fn0 -> 4/5; c: tp0 -> 0
    assert m.macro_f1(preds, golds, ["a", "b", "c"]) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    conf = m.confusion_matrix(preds, golds, ["a", "b", "c"])
    assert conf.columns == ("a", "b", "c", "(invalid)")
    assert conf.matrix == ((1, 1, 0, 0), (0, 2, 0, 0), (0, 0, 0, 1))


def test_macro_f1_ignores_labels_absent_from_gold_and_predictions():
    assert m.macro_f1(["a", "a"], ["a", "a"], ["a", "b", "c"]) == 1.0
    assert m.macro_f1([], [], ["a"]) == 0.0


@pytest.mark.parametrize(
    ("text", "labels", "want"),
    [
        ("Billing", LABELS, "billing"),
        ("  billing.\n", LABELS, "billing"),
        ("The ticket is about TECHNICAL problems", LABELS, "technical"),
        ("Label: account\nReason: the password reset", LABELS, "account"),
        ("billing or maybe technical", LABELS, "billing"),  # the earliest label wins
        ("acount", LABELS, "account"),  # a typo is close enough
        ("Entails.", NLI, "entailment"),
        ("It contradicts the premise", NLI, "contradiction"),
        ("NEUTRAL", NLI, "neutral"),
        ("Not duplicate", ("duplicate", "not_duplicate"), "not_duplicate"),
        ("I don't know", LABELS, None),
        ("The dashboard takes over a minute to load", LABELS, None),  # 'the'/'over' are not 'other'
        ("Sounds like one for the others", LABELS, "other"),
        ("", LABELS, None),
        (None, LABELS, None),
    ],
)
def test_normalize_label(text, labels, want):
    assert m.normalize_label(text, labels) == want


# -- QA ------------------------------------------------------------------------------------
def test_squad_normalisation_exact_match_and_token_f1():
    assert m.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert m.normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert m.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert m.exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert m.exact_match("Paris", ["London", "paris."]) == 1.0
    # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1
    assert m.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 / 1.75)
    assert m.token_f1("dog", "cat") == 0.0
    assert m.token_f1("", "") == 1.0
    assert m.token_f1("blue whale", ["whale shark", "blue whale"]) == 1.0


# -- math ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The answer is 1,234.", 1234.0),
        ("-3.5", -3.5),
        ("Step 1: 3 + 4 = 7 apples.\n#### 42", 42.0),
        ("so 5 apples in total. The answer is: **12**", 12.0),
        ("Half of it: 3/4 of a cup", 0.75),
        ("It costs $1,000.50 in total", 1000.5),
        ("Janet has 3 ducks and sells 16 eggs", 16.0),
        ("a drop of 50%", 50.0),
        ("\\boxed{17}", 17.0),
        ("−7", -7.0),
        ("The answer is 5 apples, not 6", 5.0),
        (".5 litres", 0.5),
        ("no numbers here", None),
        ("", None),
        (42, 42.0),
        (2.5, 2.5),
        (True, None),
        (None, None),
    ],
)
def test_extract_number(text, want):
    assert m.extract_number(text) == want


def test_numeric_match():
    assert m.numeric_match("The answer is 42.0", 42) == 1.0
    assert m.numeric_match("18 dollars", "She makes 9 * 2 = 18 dollars.\n#### 18") == 1.0
    assert m.numeric_match("The answer is 41", "42") == 0.0
    assert m.numeric_match("no idea", 3) == 0.0
    assert m.numeric_match("0.1 + 0.2 = 0.30000000000000004", 0.3) == 1.0


# -- overlap metrics -----------------------------------------------------------------------
def test_rouge_l_by_hand_and_against_rouge_score():
    from rouge_score import rouge_scorer

    ref, pred = "the cat sat on the mat", "the cat on the mat"
    # LCS = 5 tokens; P = 5/5, R = 5/6 -> F = 10/11
    assert m.rouge_l(pred, ref) == pytest.approx(10 / 11)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for p, r in [(pred, ref), ("Cats are running fast", "the cat runs quickly"), ("", "something")]:
        assert m.rouge_l(p, r) == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)


def test_bleu_by_hand_and_against_sacrebleu():
    import sacrebleu

    ref = "the cat sat on the mat"
    assert m.sentence_bleu(ref, ref) == pytest.approx(100.0)
    # one extra word: n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty
    hand = 100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert m.corpus_bleu(["the cat sat on the mat today"], [ref]) == pytest.approx(hand, abs=1e-6)
    hyps = ["the cat sat on the mat today", "a dog barked loudly", "hello there"]
    refs = [ref, "the dog barked very loudly", "hello there my friend"]
    assert m.corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    for h, r in zip(hyps, refs, strict=True):
        assert m.sentence_bleu(h, r) == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score)


# -- scoring a whole output list -----------------------------------------------------------
def test_score_outputs_flags_and_counts():
    outputs = ["Billing.", "I don't know", "", None, "technical"]
    golds = ["billing", "account", "other", "billing", "account"]
    s = score_outputs(("accuracy", "macro_f1"), outputs, golds, LABELS, resamples=100)
    assert s.predictions == ["billing", None, None, None, "technical"]
    assert s.flags == [None, "invalid_prediction", "empty_output", "generation_error", None]
    assert s.flag_counts() == {"empty_output": 1, "invalid_prediction": 1, "no_number": 0, "generation_error": 1}
    assert s.aggregates["accuracy"] == pytest.approx(1 / 5)
    assert s.per_record["accuracy"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert s.confusion is not None and sum(map(sum, s.confusion.matrix)) == 5
    assert s.intervals["accuracy"].low <= 0.2 <= s.intervals["accuracy"].high


def test_score_outputs_math_and_overlap():
    s = score_outputs(("numeric_match",), ["The answer is 4.", "about five"], [4, "#### 5"])
    assert s.per_record["numeric_match"] == [1.0, 0.0]
    assert s.predictions == ["4", None] and s.flags == [None, "no_number"]
    g = score_outputs(("rouge_l", "bleu"), ["the cat sat on the mat"] * 2, ["the cat sat on the mat"] * 2)
    assert g.aggregates["rouge_l"] == pytest.approx(1.0) and g.aggregates["bleu"] == pytest.approx(100.0)


# -- perplexity ----------------------------------------------------------------------------
def test_perplexity_full_window_equals_exp_loss_and_sliding_scores_every_token(tiny_engine):
    import torch

    model, tok = tiny_engine.model, tiny_engine.tokenizer
    text = "The capital of France is Paris. The capital of Italy is Rome. Hello world! " * 3
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = ids.size(1)
    with torch.inference_mode():
        want = math.exp(float(model(input_ids=ids, labels=ids).loss))
    full = m.perplexity(model, tok, text, window=n + 5)
    assert full.perplexity == pytest.approx(want, rel=1e-5)
    assert full.tokens == n - 1
    sliding = m.perplexity(model, tok, text, window=16, stride=8)
    assert sliding.tokens == n - 1 and sliding.window == 16 and sliding.stride == 8
    assert math.isfinite(sliding.perplexity) and sliding.perplexity > 1
    assert m.perplexity(model, tok, text, window=16, stride=16).stride == 15  # always overlapping
    with pytest.raises(ValueError, match="two tokens"):
        m.perplexity(model, tok, "a")
