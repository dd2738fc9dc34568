"""Inference over candidate views, free of LlamaIndex types: stage-1 scoring and the stage-2 judgement.

The LlamaIndex postprocessors, the synthesizer and the evaluation rerankers are thin adapters over these.
"""

from .scoring import AnswerTokenError, YesNoScorer, answer_token_ids, descending_order, select_top
from .stage2 import PendingResult, Stage2Model

__all__ = ["AnswerTokenError", "PendingResult", "Stage2Model", "YesNoScorer", "answer_token_ids", "descending_order", "select_top"]
