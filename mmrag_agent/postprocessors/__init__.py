"""LlamaIndex components over :mod:`mmrag_agent.inference`: the stage-1 relevance filter, the stage-2 list-wise
reranker and the explainable synthesizer. Each drops into an existing LlamaIndex app in one line."""

from .base import EVIDENCE_KEYS, node_view
from .stage1 import Stage1RelevanceFilter
from .stage2 import Stage2ListwiseReranker
from .synthesizer import ExplainableSynthesizer

__all__ = ["EVIDENCE_KEYS", "ExplainableSynthesizer", "Stage1RelevanceFilter", "Stage2ListwiseReranker", "node_view"]
