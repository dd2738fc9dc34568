"""The output contract of both stages: tags, answer words, assistant prefixes, the rank and citation grammar, parsers.

Every module that writes, rewards, evaluates, serves or shows model output imports its rules from here, so that
training, held-out evaluation, inference and the HTML page read a completion the same way.

Stage 1 (point-wise) answers ``<answer>yes</answer>`` or ``<answer>no</answer>``, optionally after
``<think>...</think>``. Stage 2 (list-wise) writes::

    <think>reasoning</think>
    <rank>[3] > [1]</rank>
    <answer>The logo is green [3].</answer>

Citations are bracketed candidate numbers: ``[3]``, grouped ``[1, 3]`` / ``[1; 3]``, or adjacent ``[1][3]``, all
read alike. Every scanner here is linear in the length of its input (no regular expression has nested or
adjacent unbounded quantifiers over the same characters) and never converts more than :data:`MAX_ID_DIGITS`
digits to an integer, so hostile or degenerate model output costs no more than its length.
"""

from .grammar import (
    ANSWER_CLOSE, ANSWER_OPEN, MAX_ID_DIGITS, NO, RANK_CLOSE, RANK_OPEN, STAGE1_PREFIX, STAGE1_REASONING_PREFIX, STAGE2_PREFIX,
    THINK_CLOSE, THINK_OPEN, YES, Citation, Stage1Output, candidate_marker, completion_text, find_citations, parse_stage1_output,
    stage1_completion, stage2_completion, stage2_output_regex, strip_citations,
)
from .stage2 import Stage2Output, parse_stage2_output, stage2_format_ok

__all__ = [
    "ANSWER_CLOSE", "ANSWER_OPEN", "MAX_ID_DIGITS", "NO", "RANK_CLOSE", "RANK_OPEN", "STAGE1_PREFIX", "STAGE1_REASONING_PREFIX",
    "STAGE2_PREFIX", "THINK_CLOSE", "THINK_OPEN", "YES", "Citation", "Stage1Output", "Stage2Output", "candidate_marker",
    "completion_text", "find_citations", "parse_stage1_output", "parse_stage2_output", "stage1_completion", "stage2_completion",
    "stage2_format_ok", "stage2_output_regex", "strip_citations",
]
