"""Prompts of the two stages, built here for training, held-out evaluation and serving alike.

A candidate is shown as a :class:`CandidateView`: its image (for vision-language models) followed by its text
surrogate, or its text with its title. :func:`candidate_view` makes one from a rerank example's candidate
(image paths resolved against the data file); LlamaIndex nodes are converted by the postprocessors. Stage 1
judges one (query, candidate) pair; stage 2 shows the query and K candidates numbered ``[1]..[K]``. The
instruction and the query come first, so that the prompts of one query share a prefix. What the model writes,
and what its assistant turn is pre-filled with, is :mod:`mmrag_agent.format`; a trained model's prefix and
budgets come from its :mod:`model card <mmrag_agent.model_card>`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .format import ANSWER_CLOSE, ANSWER_OPEN, RANK_CLOSE, RANK_OPEN, THINK_CLOSE, THINK_OPEN, candidate_marker

logger = logging.getLogger(__name__)

#: Version of the prompt text below; recorded in model cards. Change it whenever a prompt's wording changes.
PROMPT_VERSION = "1"
#: Token budget of the question in a prompt (a longer one is cut, with a warning).
DEFAULT_MAX_QUERY_TOKENS = 512

STAGE1_SYSTEM = "You judge whether a retrieved candidate helps answer a question."
STAGE1_INSTRUCTION = "Decide whether the candidate below is relevant to the question, judging this candidate alone."
STAGE1_ASK = "Is the candidate relevant to the question? Answer with <answer>yes</answer> or <answer>no</answer>."
STAGE1_ASK_REASONING = (
    "Is the candidate relevant to the question? First reason briefly inside <think></think>, then answer with "
    "<answer>yes</answer> or <answer>no</answer>."
)


@dataclass
class CandidateView:
    """What a model is shown of one candidate.

    Attributes:
        text: The passage, or an image's text surrogate.
        title: Optional title.
        image: A PIL image or a path, for vision-language models; None for text.
        modality: ``"text"`` or ``"image"``.
        key: An identity (node id, candidate id): stage-2 results are remembered per query and keys.
    """

    text: str = ""
    title: str | None = None
    image: Any = None
    modality: str = "text"
    key: str | None = None


def candidate_view(candidate: Any, data_file: str | Path | None = None, with_image: bool = True,
                   allow_outside: bool = False) -> CandidateView:
    """How a rerank example's candidate is shown to the models (training, held-out evaluation, ``mmrag eval``).

    Args:
        candidate: A :class:`mmrag_agent.schema.Candidate`.
        data_file: The JSONL file the candidate was read from: a relative ``image_path`` is resolved against
            its folder (never against the working directory).
        with_image: Attach the image file (for vision-language models); else the view is text only.
        allow_outside: Let ``image_path`` point outside the data file's folder.

    Returns:
        The :class:`CandidateView`; its ``image`` is the resolved file path, or None.

    Raises:
        mmrag_agent.schema.DatasetError: ``with_image`` and the image file is missing or outside the folder.

    Example:
        >>> candidate_view(Candidate(id="c1", modality="image", text="A red logo", image_path="img/c1.jpg"),
        ...                "data/train.jsonl").image
        'data/img/c1.jpg'
    """
    image = None
    if with_image and candidate.image_path:
        if data_file is None:
            raise ValueError(f"candidate {candidate.id!r}: pass data_file= (the JSONL it was read from) to resolve its image_path")
        image = str(candidate.image_file(data_file, allow_outside, must_exist=True))  # errors name the line and qid
    return CandidateView(text=candidate.text or "", title=candidate.title, image=image, modality=candidate.modality,
                         key=candidate.id)


def cut_query(query: str, tokenizer=None, max_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS) -> str:
    """The question cut to ``max_tokens`` tokens of ``tokenizer`` (with a warning), so a huge question cannot
    exhaust the model's window or the memory; unchanged when it fits or without a tokenizer."""
    if tokenizer is None or not max_tokens or len(query) <= max_tokens:  # a token is at least one character
        return query
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return query
    logger.warning("the question has %d tokens; only its first %d are shown to the model", len(ids), max_tokens)
    return tokenizer.decode(ids[:max_tokens]).rstrip() + " ..."


def candidate_text(candidate: CandidateView, tokenizer=None, max_tokens: int | None = 256) -> str:
    """The candidate's title and text, the text cut to ``max_tokens`` tokens of ``tokenizer``."""
    text = " ".join(candidate.text.split())
    if candidate.title and text == candidate.title.strip():
        text = ""  # a surrogate that only repeats the title adds nothing
    if tokenizer is not None and max_tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens]).rstrip() + " ..."
    kind = "Image" if candidate.modality == "image" else "Text"
    lines = [f"{kind} candidate" + (f": {candidate.title}" if candidate.title else "")]
    if text:
        lines.append(("Image description: " if candidate.modality == "image" else "") + text)
    return "\n".join(lines)


def stage1_messages(query: str, candidate: CandidateView, with_image: bool, tokenizer=None,
                    max_text_tokens: int | None = 256, reasoning: bool = False,
                    max_query_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS) -> list[dict]:
    """Chat messages for one (query, candidate) judgement.

    Args:
        query: The question.
        candidate: The candidate.
        with_image: Put the image in the message (vision-language models); otherwise only its surrogate.
        tokenizer: Used to cut the candidate text to ``max_text_tokens``.
        max_text_tokens: Token budget of the candidate text.
        reasoning: Ask for ``<think>`` reasoning before the answer.
        max_query_tokens: Token budget of the question (:func:`cut_query`).
    """
    prefix = f"{STAGE1_INSTRUCTION}\n\nQuestion: {cut_query(query, tokenizer, max_query_tokens)}\n\n"
    body = candidate_text(candidate, tokenizer, max_text_tokens)
    ask = STAGE1_ASK_REASONING if reasoning else STAGE1_ASK
    if with_image and candidate.image is not None:
        content: Any = [{"type": "text", "text": prefix}, {"type": "image"}, {"type": "text", "text": f"\n{body}\n\n{ask}"}]
    else:
        content = f"{prefix}{body}\n\n{ask}"
    return [{"role": "system", "content": STAGE1_SYSTEM}, {"role": "user", "content": content}]


# ------------------------------------------------------------------------------------------- stage 2
# The query and K numbered candidates; the model thinks, ranks and answers:
#     <think> which candidates matter and how the answer follows </think>
#     <rank>[3] > [1]</rank>
#     <answer> the answer, citing candidates as [3] </answer>
STAGE2_SYSTEM = "You rank retrieved candidates by how much they help answer a question, then answer it and explain why."
STAGE2_ASK = (
    f"Write three parts, in this order: {THINK_OPEN} your reasoning about which candidates matter and how the answer "
    f"follows {THINK_CLOSE}, then {RANK_OPEN} the ids of the relevant candidates, most relevant first, for example "
    f"[3] > [1] {RANK_CLOSE}, then {ANSWER_OPEN} the answer, citing the candidates it uses as [n] {ANSWER_CLOSE}."
)


def stage2_instruction(num_candidates: int) -> str:
    """The task sentence placed before the question, naming the id range ``[1]..[K]``.

    Example:
        >>> stage2_instruction(2)
        'Answer the question using the candidates below, numbered [1] to [2]. Judge every candidate, rank the relevant ones, and answer.'
    """
    span = candidate_marker(1) + (f" to {candidate_marker(num_candidates)}" if num_candidates > 1 else "")
    return f"Answer the question using the candidates below, numbered {span}. Judge every candidate, rank the relevant ones, and answer."


def stage2_messages(query: str, candidates: Sequence[CandidateView], with_images: bool, tokenizer=None,
                    max_text_tokens: int | None = 256, max_query_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS) -> list[dict]:
    """Chat messages for one stage-2 judgement: rank the K candidates and answer the query.

    Args:
        query: The question.
        candidates: The K candidates in the order to show them; the one at index ``i`` is ``[i + 1]``.
        with_images: Put each image candidate's image in the message (vision-language models): an
            ``{"type": "image"}`` placeholder, to be filled by the processor / TRL from the example's images
            in the same order. Otherwise images are shown by their text surrogate only.
        tokenizer: Used to cut each candidate's text to ``max_text_tokens`` tokens (no cut without it).
        max_text_tokens: Token budget of each candidate's text.
        max_query_tokens: Token budget of the question (:func:`cut_query`).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``. The user content is a string, or a list of
        ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts when an image is shown. The question
        always precedes the candidates.

    Raises:
        ValueError: ``candidates`` is empty.

    Example:
        >>> msgs = stage2_messages("Which film has a bear?", [CandidateView(text="The Bad News Bears",
        ...     title="The Bad News Bears", modality="image")], with_images=False)
        >>> print(msgs[1]["content"].splitlines()[5])
        [1] Image candidate: The Bad News Bears
    """
    if not candidates:
        raise ValueError("stage 2 needs at least one candidate")
    query = cut_query(query, tokenizer, max_query_tokens)
    parts: list[dict[str, Any]] = [{"type": "text", "text": f"{stage2_instruction(len(candidates))}\n\nQuestion: {query}\n\nCandidates:\n"}]
    for position, cand in enumerate(candidates, start=1):
        body = candidate_text(cand, tokenizer, max_text_tokens)
        lead = "\n" if position > 1 else ""
        if with_images and cand.image is not None:
            parts += [{"type": "text", "text": f"{lead}{candidate_marker(position)}\n"}, {"type": "image"}, {"type": "text", "text": f"\n{body}\n"}]
        else:
            parts.append({"type": "text", "text": f"{lead}{candidate_marker(position)} {body}\n"})
    parts.append({"type": "text", "text": f"\n{STAGE2_ASK}"})
    content = _merge_text(parts)
    if len(content) == 1:
        content = content[0]["text"]
    return [{"role": "system", "content": STAGE2_SYSTEM}, {"role": "user", "content": content}]


def _merge_text(parts: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for part in parts:
        if part["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(dict(part))
    return merged


def render_chat(processor_or_tokenizer, messages: list[dict], assistant_prefix: str = "") -> str:
    """The prompt string: the chat template with the generation prompt, plus a pre-filled assistant start."""
    text = processor_or_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + assistant_prefix
