"""Explained answers: the evidence of every candidate (:mod:`.evidence`) and its self-contained HTML page (:mod:`.html`)."""

from .evidence import NO_ANSWER, NOTHING_RETRIEVED, CandidateEvidence, ExplainedAnswer, build_explained_answer
from .html import candidate_anchor, render_explanation_html, write_explanation_html

__all__ = ["NO_ANSWER", "NOTHING_RETRIEVED", "CandidateEvidence", "ExplainedAnswer", "build_explained_answer",
           "candidate_anchor", "render_explanation_html", "write_explanation_html"]
