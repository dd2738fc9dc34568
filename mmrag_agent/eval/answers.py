"""Answer metrics: MultimodalQA list EM/F1, WebQA keyword accuracy by ``Qcate``, and token F1.

Sources followed, line by line (pure-Python re-implementations; no dependency on the original packages):

* MultimodalQA: ``baselines/evaluate.py`` of allenai/multimodalqa (commit c9144b08), which copies the DROP
  evaluation ``allennlp_rc/eval/drop_eval.py`` of allenai/allennlp-reading-comprehension and adds word-number
  normalisation (``word2number.w2n.word_to_num``). ``word2number`` is not installed here, so its
  ``word_to_num`` (akshaynagpal/w2n ``word2number/w2n.py``, release 1.1) is replicated in :func:`_word_to_num`.
* WebQA: ``vlp/eval_1022.py`` of WebQnA/WebQA_Baseline (the leaderboard script linked from WebQnA/WebQA
  ``eval_webqa.md``): its ``normalize_text``, ``compute_vqa_metrics``, ``detectNum``, ``toNum`` and the closed
  vocabularies ``color_set`` / ``shape_set`` / ``yesno_set``, copied as published (odd members included:
  ``'yes'`` is a colour, ``'h'`` and ``'xs'`` are shapes).

Scale: per-answer functions return values in [0, 1]; the official MultimodalQA script reports corpus means
×100, as :func:`mmqa_scores` does.

Deviations from the official scripts (everything else is reproduced exactly):

* WebQA: spaCy lemmatisation (``en_core_web_sm``) is **not** applied (no model offline, and a metric should
  not depend on one), so ``circles`` does not match ``circle``; BARTScore fluency is **not** computed. Only
  the keyword accuracy is reported. On the validation set, where ``Keywords_A`` is ``TBD`` (text questions),
  :func:`webqa_report` scores against the gold answers instead, as WebQnA/WebQA ``eval_webqa.md`` advises.
* MultimodalQA: a reference and a prediction that are both empty lists score F1 1.0 (the script gives NaN);
  a number phrase that makes ``word_to_num`` raise ``IndexError`` (only possible inside one token, e.g.
  ``"thousand\\tfive"``) is treated as a non-number instead of crashing.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["answer_f1", "mmqa_em_f1", "mmqa_scores", "normalize_answer", "webqa_accuracy", "webqa_report"]

# --- word2number 1.1, w2n.word_to_num (akshaynagpal/w2n word2number/w2n.py) -------------------------------------
_W2N = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                                   "fifteen sixteen seventeen eighteen nineteen".split())}
_W2N.update({"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
             "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000})
_DECIMAL_WORDS = list(_W2N)[:10]


def _number_formation(words: list[str]) -> int:
    n = [_W2N[w] for w in words]  # an empty list raises IndexError, as in w2n
    if len(n) in (3, 4):
        return n[0] * n[1] + sum(n[2:])
    if len(n) == 2:
        return n[0] * n[1] if 100 in n else n[0] + n[1]
    return n[0]


def _decimal_sum(words: list[str]) -> float:
    return 0 if any(w not in _DECIMAL_WORDS for w in words) else float("0." + "".join(str(_W2N[w]) for w in words))


def _word_to_num(sentence: str) -> int | float:
    """w2n.word_to_num: ``"twenty-three"`` -> 23; raises ValueError without number words (``"point"`` -> 0)."""
    sentence = sentence.replace("-", " ").lower()
    if sentence.isdigit():
        return int(sentence)
    words = [w for w in sentence.strip().split() if w in _W2N or w == "point"]
    if not words:
        raise ValueError("no number words")
    if any(words.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
        raise ValueError("redundant number word")
    decimals: list[str] = []
    if "point" in words:
        i = words.index("point")
        words, decimals = words[:i], words[i + 1:]
    b, m, t = (words.index(w) if w in words else -1 for w in ("billion", "million", "thousand"))
    if (t > -1 and (t < m or t < b)) or (m > -1 and m < b):
        raise ValueError("malformed number")
    total: int | float = 0
    if len(words) == 1:
        total += _W2N[words[0]]
    elif words:
        last = len(words) - 1
        if b > -1:
            total += _number_formation(words[:b]) * 1000000000
        if m > -1:
            total += _number_formation(words[b + 1:m] if b > -1 else words[:m]) * 1000000
        if t > -1:
            total += _number_formation(words[m + 1:t] if m > -1 else words[b + 1:t] if b > -1 else words[:t]) * 1000
        if t > -1 and t != last:
            total += _number_formation(words[t + 1:])
        elif m > -1 and m != last and t != last:
            total += _number_formation(words[m + 1:])
        elif b > -1 and b != last:
            total += _number_formation(words[b + 1:])
        elif t == -1 and m == -1 and b == -1:
            total += _number_formation(words)
    if decimals:
        total += _decimal_sum(decimals)
    return total


# --- MultimodalQA (allenai/multimodalqa baselines/evaluate.py, itself DROP's drop_eval.py) -----------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _parses(convert: Any, text: str) -> bool:
    try:
        convert(text)
    except ValueError:
        return False
    return True


def _is_number(text: str) -> bool:
    return _parses(float, text)


def _normalize_number(text: str) -> str:
    if _is_number(text):
        return str(float(text))
    try:  # MultimodalQA's addition to DROP: word numbers ("three" -> "3.0")
        return str(float(_word_to_num(text)))
    except (ValueError, IndexError):
        return text


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", _normalize_number(token)).split())


def normalize_answer(text: str) -> str:
    """DROP / MultimodalQA answer normalisation (``_normalize_answer`` of the official script).

    The text is split on spaces and hyphens; each token is lower-cased, stripped of punctuation unless it
    parses as a float (so ``"3.5"`` keeps its point, ``"1,000"`` becomes ``"1000"``), turned into a
    canonical float string when it is a number or a number word (``"1000"``, ``"1000.0"`` and ``"thousand"``
    all give ``"1000.0"``), and dropped if it is an article (a / an / the).

    Args:
        text: An answer.

    Returns:
        The normalised answer: tokens joined by single spaces.

    Example:
        >>> normalize_answer("The Twenty-three 1,000 cats!")
        '20.0 3.0 1000.0 cats'
    """
    parts = [_normalize_token(token) for token in re.split(" |-", str(text))]
    return " ".join(part for part in parts if part.strip()).strip()


def _answer_to_bags(answer: str | Sequence[str]) -> tuple[list[str], list[set[str]]]:
    spans = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    normalized = [normalize_answer(span) for span in spans]
    return normalized, [set(span.split()) for span in normalized]


def _compute_f1(predicted_bag: set[str], gold_bag: set[str]) -> float:
    intersection = len(gold_bag & predicted_bag)
    precision = intersection / len(predicted_bag) if predicted_bag else 1.0
    recall = intersection / len(gold_bag) if gold_bag else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _match_numbers_if_present(gold_bag: set[str], predicted_bag: set[str]) -> bool:
    gold_numbers = {w for w in gold_bag if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in predicted_bag if _is_number(w)})


def _align_bags(predicted: list[set[str]], gold: list[set[str]]) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    scores = np.zeros([len(gold), len(predicted)])
    for g, gold_item in enumerate(gold):
        for p, pred_item in enumerate(predicted):
            if _match_numbers_if_present(gold_item, pred_item):
                scores[g, p] = _compute_f1(pred_item, gold_item)
    rows, cols = linear_sum_assignment(-scores)  # optimal 1-1 alignment (Hungarian), not greedy
    max_scores = np.zeros([max(len(gold), len(predicted))])
    for row, col in zip(rows, cols):
        max_scores[row] = max(max_scores[row], scores[row, col])
    return max_scores


def _list_em(predicted, gold) -> float:
    pred_spans, gold_spans = _answer_to_bags(predicted)[0], _answer_to_bags(gold)[0]
    return float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))


def _list_f1(predicted, gold) -> float:
    pred_bags, gold_bags = _answer_to_bags(predicted)[1], _answer_to_bags(gold)[1]
    if not pred_bags and not gold_bags:
        return 1.0  # the official script returns NaN here
    return float(round(np.mean(_align_bags(pred_bags, gold_bags)), 2))  # round(np.float64, 2), as the script


def _references(golds: Any) -> list[str | list[str]]:
    if isinstance(golds, str):
        return [golds]
    golds = list(golds)
    if any(isinstance(g, (list, tuple)) for g in golds):
        return [list(g) if isinstance(g, (list, tuple)) else g for g in golds]
    return [golds] if golds else []


def mmqa_em_f1(prediction: str | list[str], golds: list[str] | list[list[str]]) -> tuple[float, float]:
    """MultimodalQA list exact match and list F1 of one prediction, each the max over the references.

    As in the official ``evaluate_prediction_file``, the answers of an example together form **one**
    reference (a list answer): ``golds=["a", "b"]`` is the single reference ``{a, b}``. To give several
    alternative references, pass a list of lists (``[["a", "b"], ["c"]]``). Answers are normalised by
    :func:`normalize_answer`. List EM: the normalised answers form the same set, with as many items. List F1:
    each answer is a bag of tokens; predicted and gold bags are aligned one-to-one by the Hungarian algorithm
    on bag F1, a pair scoring only when the gold bag has no number or shares one with the predicted bag;
    the aligned F1s are averaged over ``max(#gold, #predicted)`` bags and rounded to 2 decimals.

    Args:
        prediction: The predicted answer, or a list of answers for a list question.
        golds: One reference (a list of answer strings, or a string) or several (a list of lists).

    Returns:
        ``(list_em, list_f1)`` in [0, 1]; ``(0.0, 0.0)`` without references. The official script reports
        the corpus means ×100 (see :func:`mmqa_scores`).

    Example:
        >>> mmqa_em_f1("the 3 Bears", ["Three bears"])
        (1.0, 1.0)
        >>> mmqa_em_f1(["red", "blue"], ["blue", "green"])
        (0.0, 0.5)
    """
    refs = _references(golds)
    if not refs:
        return 0.0, 0.0
    if not isinstance(prediction, (list, tuple)):
        prediction = "" if prediction is None else str(prediction)
    return max(_list_em(prediction, r) for r in refs), max(_list_f1(prediction, r) for r in refs)


def mmqa_scores(predictions: Sequence[str | list[str] | None], golds: Sequence[Any]) -> dict[str, float]:
    """Corpus MultimodalQA scores as the official ``evaluate_predictions`` reports them (means ×100).

    Args:
        predictions: One prediction per question; None means missing (scores 0, as in the script).
        golds: The references of each question, aligned with ``predictions`` (see :func:`mmqa_em_f1`).

    Returns:
        ``{"list_em": 0..100, "list_f1": 0..100, "n": number of questions}``; ValueError when the two
        sequences differ in length or are empty.

    Example:
        >>> mmqa_scores(["red", None], [["red"], ["blue"]])
        {'list_em': 50.0, 'list_f1': 50.0, 'n': 2}
    """
    if len(predictions) != len(golds) or not predictions:
        raise ValueError(f"need one prediction per question: {len(predictions)} predictions, {len(golds)} golds")
    pairs = [mmqa_em_f1(p, g) if p is not None else (0.0, 0.0) for p, g in zip(predictions, golds)]
    return {"list_em": float(np.mean([em for em, _ in pairs]) * 100), "list_f1": float(np.mean([f1 for _, f1 in pairs]) * 100),
            "n": len(pairs)}


def answer_f1(prediction: str, golds: Sequence[str] | str) -> float:
    """SQuAD-style token F1 after :func:`normalize_answer`, max over the gold answers (stage-2 reward).

    Tokens are counted as a multiset; if either side normalises to nothing, the score is 1.0 when both do,
    else 0.0. A gold given as a list of strings (a list answer) is joined with spaces.

    Args:
        prediction: The predicted answer (None counts as empty).
        golds: Alternative gold answers (a single string is one gold).

    Returns:
        The best F1 in [0, 1]; 0.0 without golds.

    Example:
        >>> round(answer_f1("It is the green logo", ["green"]), 3)  # P = 1/4, R = 1
        0.4
    """
    if isinstance(golds, str):
        golds = [golds]
    pred = normalize_answer(prediction or "").split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize_answer(" ".join(gold) if isinstance(gold, (list, tuple)) else str(gold)).split()
        if not pred or not gold_tokens:
            best = max(best, float(pred == gold_tokens))
            continue
        same = sum((Counter(pred) & Counter(gold_tokens)).values())
        if same:
            precision, recall = same / len(pred), same / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# --- WebQA (WebQnA/WebQA_Baseline vlp/eval_1022.py) ------------------------------------------------------------
COLOR_SET = frozenset(
    "orangebrown spot yellow blue rainbow ivory brown gray teal bluewhite orangepurple black white gold redorange pink blonde "
    "tan turquoise grey beige golden orange bronze maroon purple bluere red rust violet transparent yes silver chrome green "
    "aqua".split())
SHAPE_SET = frozenset(
    "globular octogon ring hoop octagon concave flat wavy shamrock cross cylinder cylindrical pentagon point pyramidal "
    "crescent rectangular hook tube cone bell spiral ball convex square arch h cuboid step rectangle dot oval circle star "
    "crosse crest octagonal cube triangle semicircle domeshape obelisk corkscrew curve circular xs slope pyramid round bow "
    "straight triangular heart fork teardrop fold curl spherical diamond keyhole conical dome sphere bellshaped rounded "
    "hexagon flower globe torus".split())
YESNO_SET = frozenset({"yes", "no"})
_NUMBER = "number"
_DOMAINS: dict[str, frozenset[str] | str] = {"color": COLOR_SET, "shape": SHAPE_SET, "yesno": YESNO_SET, "number": _NUMBER}
_WEBQA_PUNCT = set(string.punctuation) - {"."}


def _to_num(word: str) -> Any:
    try:
        return word if word == "point" else _word_to_num(word)
    except Exception:  # the script's bare except
        return word


def _webqa_normalize(s: str) -> str:
    """``normalize_text`` of eval_1022.py without the final spaCy lemmatisation."""
    def numbers(text: str) -> str:
        return " ".join(str(_to_num(w)) for w in text.split())

    def punc(text: str) -> str:
        return re.sub(r"\.(?!\d)", "", "".join(ch for ch in text if ch not in _WEBQA_PUNCT))

    if len(s.strip()) == 1:  # a single character keeps its punctuation and article
        return numbers(s.lower())
    # a single word keeps its article
    return numbers(punc(s.lower()) if len(s.strip().split()) == 1 else _ARTICLES.sub(" ", punc(s.lower())))


def _detect_num(words: list[str]) -> list[str]:
    return [str(int(w)) for w in words if _parses(int, w)]


def _webqa_f1_recall(prediction: str, reference: str, domain: frozenset[str] | str | None) -> tuple[float, float]:
    bow_a, bow_c = _webqa_normalize(reference).split(), _webqa_normalize(prediction).split()
    if domain == _NUMBER:
        bow_c, bow_a = _detect_num(bow_c), _detect_num(bow_a)
    elif domain is not None:
        bow_c, bow_a = list(domain.intersection(bow_c)), list(domain.intersection(bow_a))
    same = sum((Counter(bow_a) & Counter(bow_c)).values())
    if same == 0:
        return 0.0, 0.0
    precision, recall = same / len(bow_c), same / len(bow_a)
    return 2 * precision * recall / (precision + recall + 1e-5), recall  # the script's 1e-5


def webqa_accuracy(prediction: str, keywords: str | list[str], qcate: str) -> float:
    """WebQA answer accuracy of one prediction for its question category (``Qcate``).

    Both texts are normalised (lower case; punctuation removed except decimal points; articles removed from
    multi-word texts; number words to digits). Then, by category (case-insensitive):

    * ``color`` / ``shape`` / ``YesNo``: F1 between the *sets* of words of each side that belong to the
      category's closed vocabulary (:data:`COLOR_SET`, :data:`SHAPE_SET`, :data:`YESNO_SET`);
    * ``number``: F1 between the bags of integer tokens (decimals are ignored, as in the script);
    * any other category (``Others``, ``choose``, ``text``): recall of the keyword tokens.

    F1 is ``2PR / (P + R + 1e-5)`` as in the official script, so an exact answer scores 0.99999..., not 1.
    No spaCy lemmatisation (see the module notes).

    Args:
        prediction: The answer.
        keywords: The keyword answer (``Keywords_A``), or a list of alternative references (max over them).
        qcate: The question category.

    Returns:
        The accuracy in [0, 1]; 0.0 without references.

    Example:
        >>> round(webqa_accuracy("The flowers were red and white.", "red", "color"), 3)  # P = 1/2, R = 1
        0.667
        >>> webqa_accuracy("There are two bridges.", "2", "number") > 0.99
        True
    """
    refs = [keywords] if isinstance(keywords, str) else [str(k) for k in keywords]
    domain = _DOMAINS.get(str(qcate).lower())
    prediction = "" if prediction is None else str(prediction)
    best = 0.0
    for ref in refs:
        f1, recall = _webqa_f1_recall(prediction, ref, domain)
        best = max(best, f1 if domain is not None else recall)
    return best


def _missing_keywords(keywords: Any) -> bool:
    if keywords is None or isinstance(keywords, str):
        return (keywords or "").strip().upper() in ("", "TBD")
    return not any(str(k).strip() for k in keywords)


def webqa_report(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean :func:`webqa_accuracy` per ``Qcate``, plus ``"All"`` over every row (as the official script prints).

    Each row is a mapping with ``"prediction"``, ``"qcate"`` and ``"keywords"`` (``Keywords_A``), and
    optionally ``"answers"`` (the gold answers). When the keywords are missing, empty or ``"TBD"`` (WebQA
    validation text questions), the gold answers are the references instead (WebQnA/WebQA ``eval_webqa.md``).

    Args:
        rows: The rows to score.

    Returns:
        ``{qcate: {"n": rows, "accuracy": mean in [0, 1], "n_answer_fallback": rows scored against answers}}``,
        categories in order of first appearance, then ``"All"``; ``{}`` without rows.

    Example:
        >>> webqa_report([{"prediction": "Yes, it is.", "keywords": "Yes", "qcate": "YesNo"},
        ...               {"prediction": "No.", "keywords": "Yes", "qcate": "YesNo"}])["YesNo"]["accuracy"] > 0.49
        True
    """
    scores: dict[str, list[float]] = {}
    fallback: Counter[str] = Counter()
    for row in rows:
        qcate = str(row["qcate"])
        refs = row.get("keywords")
        if _missing_keywords(refs) and row.get("answers"):
            refs = row["answers"]
            fallback[qcate] += 1
        scores.setdefault(qcate, []).append(webqa_accuracy(row.get("prediction") or "", refs or "", qcate))
    if not scores:
        return {}
    report = {q: {"n": len(v), "accuracy": float(np.mean(v)), "n_answer_fallback": fallback[q]} for q, v in scores.items()}
    every = [s for v in scores.values() for s in v]
    report["All"] = {"n": len(every), "accuracy": float(np.mean(every)), "n_answer_fallback": sum(fallback.values())}
    return report
