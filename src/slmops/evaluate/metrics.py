"""Task metrics as pure functions: one prediction and one gold answer in, a score out.

Scales: every metric is in [0, 1] except BLEU, which keeps sacrebleu's 0-100 scale so the
numbers compare with published ones. ROUGE-L and BLEU are the reference implementations
(``rouge-score`` and ``sacrebleu``), never re-implemented here.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

# -- answer normalisation (SQuAD) ------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else [str(g) for g in gold]


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (any of several)."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def _token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 against the best-matching gold answer."""
    return max(_token_f1(prediction, g) for g in _golds(gold))


# -- numbers (math) --------------------------------------------------------------------------
_NUM = r"[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?|[-−]?\.\d+"
_NUM_RE = re.compile(_NUM)
_MARKED = (
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
    re.compile(r"answer\s*(?:is|:|=)?\s*:?\s*\**\s*(" + _NUM + ")", re.IGNORECASE),
)


def parse_number(token: str) -> float | None:
    """``"1,234"`` → 1234, ``"-3.5"`` → -3.5, ``"3/4"`` → 0.75, ``"$5"`` → 5, ``"50%"`` → 50."""
    t = token.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip("%")
    try:
        if "/" in t:
            num, den = t.split("/", 1)
            return float(Fraction(int(num), int(den))) if int(den) else None
        return float(t)
    except ValueError:
        return None


def extract_number(text: Any) -> float | None:
    """The final answer as a number: a marked answer (``#### 42``, ``\\boxed{42}``, ``the
    answer is 42``) wins, else the last number in the text. ``None`` when there is none."""
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    text = str(text)
    for pattern in _MARKED:
        found = pattern.findall(text)
        if found:
            return parse_number(found[-1])
    numbers = _NUM_RE.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def numeric_match(prediction: str, gold: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    """1.0 when the prediction's final number equals the gold's (which may be a number or a
    worked solution ending in ``#### N``)."""
    want, got = extract_number(gold), extract_number(prediction)
    if want is None or got is None:
        return 0.0
    return float(math.isclose(want, got, rel_tol=rel_tol, abs_tol=abs_tol))


# -- labels (classification, NLI) -------------------------------------------------------------
def label_key(text: str) -> str:
    text = re.sub(r"[_\-/]+", " ", text.lower())
    return " ".join("".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text).split())


def _similarity(word: str, label: str) -> float:
    """difflib ratio, or 1.0 when the word and label share a stem (a common prefix of at
    least 5 characters and 60% of the label: entails/entailment, contradicts/contradiction)."""
    prefix = len(os.path.commonprefix([word, label]))
    if prefix >= max(5, 0.6 * len(label)):
        return 1.0
    return difflib.SequenceMatcher(None, word, label).ratio()


def normalize_label(text: Any, labels: Sequence[str], *, cutoff: float = 0.8) -> str | None:
    """Map free text to one label of ``labels`` (case, punctuation, ``_``/``-`` ignored).

    In order: the whole text is a label; a label appears as whole words (the earliest one
    wins: "Billing - the customer was charged twice" → billing); a word is close to a label
    (same stem, or difflib ratio ≥ ``cutoff``: "entails" → entailment, "acount" → account). ``None`` when nothing fits.
    """
    if text is None:
        return None
    key = label_key(str(text))
    if not key:
        return None
    keys = {label_key(lab): lab for lab in labels}
    if key in keys:
        return keys[key]
    padded = f" {key} "
    hits = [(padded.find(f" {k} "), -len(k), lab) for k, lab in keys.items() if k and f" {k} " in padded]
    if hits:
        return min(hits)[2]
    best: tuple[float, int, str] | None = None
    for pos, word in enumerate(key.split()[:50]):
        if len(word) < 4:  # "the" is 75% similar to "other"; short words say nothing
            continue
        for k, lab in keys.items():
            ratio = _similarity(word, k)
            if ratio >= cutoff and (best is None or (ratio, -pos) > (best[0], -best[1])):
                best = (ratio, pos, lab)
    return best[2] if best else None


def accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    if len(predictions) != len(golds):
        raise ValueError("predictions and golds differ in length")
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds) if golds else 0.0


@dataclass(frozen=True)
class Confusion:
    """Rows are gold labels, columns predicted labels plus a last ``(invalid)`` column for
    predictions that matched no label."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.labels, "(invalid)")

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "columns": list(self.columns), "matrix": [list(r) for r in self.matrix]}


def confusion_matrix(predictions: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]) -> Confusion:
    index = {lab: i for i, lab in enumerate(labels)}
    rows = [[0] * (len(labels) + 1) for _ in labels]
    for p, g in zip(predictions, golds, strict=True):
        if g in index:
            rows[index[g]][index.get(p, len(labels)) if p is not None else len(labels)] += 1
    return Confusion(tuple(labels), tuple(tuple(r) for r in rows))


def macro_f1(predictions: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the labels that occur as gold or prediction
    (as scikit-learn does without ``labels=``). A prediction outside the label set counts as
    a miss for the gold label and a false positive for no label."""
    present = [lab for lab in labels if lab in set(golds) or lab in set(predictions)]
    if not present:
        return 0.0
    scores = []
    for lab in present:
        tp = sum(p == lab and g == lab for p, g in zip(predictions, golds, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(predictions, golds, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(predictions, golds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


# -- overlap metrics (reference packages) ----------------------------------------------------
@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``, Porter stemming), in [0, 1]."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu sentence BLEU (0-100, with its default exponential smoothing)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0-100): the number to quote for a whole test set."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) if predictions else 0.0


# -- perplexity ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    tokens: int  # tokens scored (every token but the first)
    window: int
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "tokens": self.tokens, "window": self.window, "stride": self.stride}


def perplexity(
    model: Any, tokenizer: Any, text: str, *, window: int | None = None, stride: int | None = None
) -> Perplexity:
    """Perplexity of a causal LM on ``text`` with a sliding window (Hugging Face recipe):
    each window of ``window`` tokens moves by ``stride`` (< ``window``), and only the tokens
    not scored by an earlier window count, so every token but the first is scored once, with
    at least ``window - stride`` tokens of context (fewer only at the start)."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = int(ids.size(1))
    if n < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    context = int(getattr(model.config, "max_position_embeddings", 0) or 1024)
    window = max(2, min(window or 1024, context))
    stride = max(1, min(stride or window // 2, window - 1))  # overlap, so no token loses its context
    nll, counted, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            chunk = ids[:, begin:end]
            labels = chunk.clone()
            labels[:, : chunk.size(1) - (end - prev_end)] = -100
            scored = int((labels[:, 1:] != -100).sum())
            if scored:
                loss = model(input_ids=chunk, labels=labels).loss
                nll += float(loss) * scored
                counted += scored
            prev_end = end
            if end == n:
                break
    return Perplexity(math.exp(nll / counted), counted, window, stride)
