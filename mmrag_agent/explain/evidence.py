"""The evidence behind an explained answer, as plain data (what the CLI prints and the HTML page shows).

:func:`build_explained_answer` is the one place that turns what the pipeline's nodes carry (the metadata written
by the stage-1 and stage-2 postprocessors) and the stage-2 judgement into an :class:`ExplainedAnswer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from llama_index.core.schema import ImageNode

from ..format import Stage2Output

#: The answer text when the model wrote none that can be used, in plain words.
NO_ANSWER = "No answer: the model did not write a usable one. The candidates it was shown are listed below."
NOTHING_RETRIEVED = "No answer: nothing relevant was retrieved for this question."


@dataclass
class CandidateEvidence:
    """One retrieved candidate and what each stage made of it.

    Attributes:
        node_id: The LlamaIndex node id.
        modality: ``"text"`` or ``"image"``.
        source: Where it comes from (relative file path, with ``p.N`` for a PDF page).
        text: The text, or an image's text surrogate.
        image_path: The image file, for image candidates.
        retrieval_score: The retriever's similarity (text and image scores come from different spaces).
        stage1_probability: P(relevant) from stage 1; None when stage 1 did not score it (NaN: no usable score).
        fused_score: The score stage 1 ranked by, when it fused P(relevant) with the retrieval score.
        kept_by_stage1: Whether stage 1 passed it on to stage 2.
        stage2_position: Its ``[n]`` in the stage-2 prompt (None when not shown to stage 2).
        stage2_rank: Its rank in the stage-2 ranking (1 = most relevant; None when not ranked).
        cited: Whether the answer cites it.
    """

    node_id: str
    modality: str
    source: str
    text: str
    image_path: Optional[str] = None
    retrieval_score: Optional[float] = None
    stage1_probability: Optional[float] = None
    fused_score: Optional[float] = None
    kept_by_stage1: bool = False
    stage2_position: Optional[int] = None
    stage2_rank: Optional[int] = None
    cited: bool = False


@dataclass
class ExplainedAnswer:
    """An answer with its reasoning, ranking, citations and every candidate's evidence.

    Attributes:
        question: The question.
        answer: The answer text; it cites candidates as ``[n]`` (their ``stage2_position``).
        reasoning: The model's reasoning.
        candidates: Every retrieved candidate: those stage 2 ranked, in rank order; then the others it was shown,
            in prompt order; then the rest of those stage 1 kept, then those it dropped, each by the score stage 1
            ranked by (the fused score, else P(relevant)). When stage 2 did not reorder (its model card's ranking
            check did not find it better than stage 1), those it was shown come first in prompt order (stage 1's).
        warnings: Problems met on the way (e.g. malformed model output and the fallback used).
        raw_output: The stage-2 model's raw completion.
        timings: Seconds spent per step (``retrieve``, ``stage1``, ``stage2``).
        answered: False when the answer text is one of the "no answer" notes, not the model's.
    """

    question: str
    answer: str
    reasoning: str
    candidates: list[CandidateEvidence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw_output: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    answered: bool = True

    @property
    def cited(self) -> list[CandidateEvidence]:
        """The cited candidates, in the order of their ``[n]``."""
        return sorted((c for c in self.candidates if c.cited), key=lambda c: c.stage2_position or 0)

    def to_dict(self) -> dict:
        return asdict(self)


def build_explained_answer(question: str, nodes: Sequence[Any], judgement: Optional[tuple[Sequence[str], Stage2Output]] = None,
                           timings: Optional[dict[str, float]] = None) -> ExplainedAnswer:
    """The explained answer from the nodes the pipeline carried and the stage-2 judgement.

    Args:
        question: The question.
        nodes: ``NodeWithScore`` objects as the last step returned them: their metadata holds the evidence of each
            step (``retrieval_score``, ``relevance_probability``, ``stage1_kept``, ``fused_score``); nodes that
            carry no stage-1 evidence count as kept, with their score as the retrieval score.
        judgement: ``(keys of the nodes shown to stage 2, in prompt order, parsed output)``; None when nothing
            reached stage 2.
        timings: Seconds per step.

    Returns:
        The :class:`ExplainedAnswer`; candidates in :func:`_display_order` (stage 2's ranking first), or, when the
        nodes say stage 2 did not reorder (``stage2_reordered`` false), in the order stage 2 was shown them.
    """
    shown, output = judgement if judgement is not None else ((), None)
    position = {key: i for i, key in enumerate(shown, start=1)}
    rank = {shown[p - 1]: r for r, p in enumerate(output.ranking, start=1)} if output else {}
    cited = {shown[p - 1] for p in output.cited} if output else set()
    rows = []
    for item in nodes:
        node, meta = item.node, item.node.metadata
        scored = "relevance_probability" in meta
        source = meta.get("rel_path") or meta.get("file_name") or node.node_id[:8]
        if "page" in meta:
            source += f" p.{meta['page']}"
        is_image = isinstance(node, ImageNode)
        image_path = node.image_path if is_image else None
        rows.append(CandidateEvidence(
            node_id=node.node_id, modality="image" if is_image else "text", source=source,
            text=node.text if is_image else node.get_content(), image_path=image_path,
            retrieval_score=meta.get("retrieval_score") if scored else item.score,
            stage1_probability=meta.get("relevance_probability"), fused_score=meta.get("fused_score"),
            kept_by_stage1=bool(meta.get("stage1_kept", True)), stage2_position=position.get(node.node_id),
            stage2_rank=rank.get(node.node_id), cited=node.node_id in cited))
    # stage 2 reordered unless its reranker kept the incoming order (then that order is shown; its ranks are evidence)
    reordered = all(item.node.metadata.get("stage2_reordered", True) for item in nodes)
    rows.sort(key=_display_order if reordered else _served_order)
    if output is None:
        return ExplainedAnswer(question, NOTHING_RETRIEVED, "", rows, ["nothing was retrieved, or stage 1 kept nothing"],
                               timings=dict(timings or {}), answered=False)
    return ExplainedAnswer(question, output.answer or NO_ANSWER, output.reasoning, rows, list(output.warnings), output.raw,
                           dict(timings or {}), answered=bool(output.answer))


def _number(value: Optional[float]) -> float:
    return value if value is not None and value == value else float("-inf")  # NaN and None last


def _served_order(c: CandidateEvidence) -> tuple:
    return _display_order(c)[2:]  # the display order without stage 2's rank: prompt position, then stage 1's


def _display_order(c: CandidateEvidence) -> tuple:
    stage1_score = c.fused_score if c.fused_score is not None else c.stage1_probability
    return (c.stage2_rank is None, c.stage2_rank or 0, c.stage2_position is None, c.stage2_position or 0,
            not c.kept_by_stage1, -_number(stage1_score))
