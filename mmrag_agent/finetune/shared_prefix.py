"""The stage-1 warm start with shared prefixes: all candidates of a question in one pass, their shared tokens once.

Every stage-1 prompt of one question starts with the same tokens (system prompt, instruction, the question: about
70 of SmolLM2's 111 on MultimodalQA titles); only the candidate, the closing request and the answer differ. TRL's
``SFTTrainer`` runs each (question, candidate) sequence whole. :class:`SharedPrefixTrainer` (a
``transformers.Trainer``) runs a question's shared tokens once, repeats their key/value cache for its candidates
and runs only each candidate's own tokens, the gradient flowing back through the shared part. The loss is the one
``SFTTrainer`` computes with ``completion_only_loss``: cross-entropy on the completion (prefix + target + end of
turn, rendered by the original chat template as ``SFTTrainer`` renders it) after the GRPO prompt, here weighted per
candidate by its class weight (:func:`~.datasets.stage1_records` with every candidate) and projected onto the
vocabulary at the completion positions only. On SmolLM2-135M that trains about 4x more pairs per CPU-second than
``SFTTrainer`` (measured: README, "Real learning on this CPU").

Text models only (an image expands to tokens of its own inside the candidate part, and needs the processor);
:func:`~.sft.sft_warm_start` trains the others.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

from transformers import Trainer

from ..prompts import render_chat

__all__ = ["QuestionGroup", "SharedPrefixTrainer", "question_groups", "shared_prefix_warm_start"]


@dataclass
class QuestionGroup:
    """One question's training sequences, split into the tokens all of them share and each one's own.

    Attributes:
        qid: The question.
        prefix: Token ids every sequence of the group starts with.
        suffixes: Per candidate, the rest of its sequence: the rest of its prompt, then the completion.
        completion_starts: Per candidate, where its completion starts within its suffix (>= 1).
        weights: Per candidate, its loss weight.
        answers: Per candidate, where its yes/no answer token sits within its suffix (-1: none found).
        relevant: Per candidate, whether its label is yes.
        offsets: Per candidate, a fixed score added to its yes-no margin in the list-wise term (the record's
            ``listwise_offset``: the first-stage retriever's normalised score, scaled), so that the term trains the
            fused ranking; empty: none.
    """

    qid: str
    prefix: list[int]
    suffixes: list[list[int]]
    completion_starts: list[int]
    weights: list[float]
    answers: list[int] = field(default_factory=list)
    relevant: list[bool] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Tokens run per pass (the prefix once, every suffix)."""
        return len(self.prefix) + sum(len(s) for s in self.suffixes)


def question_groups(records: Sequence[dict], targets: Sequence[str], processor, prefix: str = "",
                    max_group: int = 32) -> list[QuestionGroup]:
    """Group stage-1 records by question into :class:`QuestionGroup` token sequences.

    Each sequence is the GRPO prompt (chat template with the generation prompt, then ``prefix``) tokenized alone, as
    the scorer and the generator see it, followed by the completion as ``SFTTrainer`` renders it (the rest of the
    original template applied to prompt + assistant turn ``prefix + target``: the target and the end of the turn).

    Args:
        records: Stage-1 records (``prompt``, ``qid``, optionally ``weight`` and ``listwise_offset``), text only.
        targets: Per record, the gold completion after ``prefix`` (:func:`~.sft.stage1_target`).
        processor: The original tokenizer (its chat template has no pre-filled prefix).
        prefix: The run's assistant prefix.
        max_group: Most candidates per group (a larger question is split into groups with the same prefix).

    Returns:
        The groups, in the order their questions first appear.

    Raises:
        ValueError: A record holds an image, or the chat template renders the completion so that the prompt is not
            its beginning (then use ``sft_shared_prefix=False``).

    Example:
        >>> groups = question_groups(stage1_records(examples, None, tokenizer=tok), targets, tok, "<answer>")
        >>> sum(len(g.suffixes) for g in groups) == len(targets)
        True
    """
    from ..inference.scoring import answer_token_ids

    tokenizer = getattr(processor, "tokenizer", processor)
    yes_no = set(answer_token_ids(tokenizer))
    by_question: dict[str, list[tuple[list[int], list[int], float, bool, float]]] = {}
    for record, target in zip(records, targets, strict=True):
        if record.get("image") or record.get("images"):
            raise ValueError("the shared-prefix warm start takes text records only; use sft_shared_prefix=False for images")
        prompt_text = render_chat(processor, record["prompt"], prefix)
        full_text = processor.apply_chat_template(record["prompt"] + [{"role": "assistant", "content": prefix + target}],
                                                  tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template does not render the completion after the generation prompt; "
                             "use sft_shared_prefix=False (TRL's SFTTrainer)")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        by_question.setdefault(str(record["qid"]), []).append((prompt_ids, completion_ids, float(record.get("weight", 1.0)),
                                                               record.get("label") == "yes", float(record.get("listwise_offset", 0.0))))
    groups = []
    for qid, rows in by_question.items():
        for start in range(0, len(rows), max_group):
            part = rows[start:start + max_group]
            n = _common_prefix_length([row[0] for row in part])
            answers = [_answer_position(len(p) - n, c, yes_no) for p, c, *_ in part]
            groups.append(QuestionGroup(qid=qid, prefix=part[0][0][:n], suffixes=[p[n:] + c for p, c, *_ in part],
                                        completion_starts=[len(row[0]) - n for row in part], weights=[row[2] for row in part],
                                        answers=answers, relevant=[row[3] for row in part], offsets=[row[4] for row in part]))
    return groups


def _answer_position(completion_start: int, completion: Sequence[int], yes_no: set[int]) -> int:
    """Where the first yes/no token of a completion sits in its suffix; -1 when there is none."""
    offset = next((i for i, token in enumerate(completion) if token in yes_no), None)
    return -1 if offset is None else completion_start + offset


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving every row at least one prompt token of its own."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


class _Groups:
    """The groups as a map-style dataset of tensors (one group per item)."""

    def __init__(self, groups: Sequence[QuestionGroup], pad_id: int) -> None:
        self.groups, self.pad_id = list(groups), pad_id

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        import torch

        group = self.groups[index]
        width = max(len(s) for s in group.suffixes)
        ids = torch.full((len(group.suffixes), width), self.pad_id, dtype=torch.long)
        own = torch.zeros((len(group.suffixes), width), dtype=torch.long)
        targets = torch.full((len(group.suffixes), width), -100, dtype=torch.long)  # targets[b, j]: the token after j
        for b, (suffix, start) in enumerate(zip(group.suffixes, group.completion_starts)):
            ids[b, :len(suffix)] = torch.tensor(suffix)
            own[b, :len(suffix)] = 1
            targets[b, start - 1:len(suffix) - 1] = torch.tensor(suffix[start:])
        return {"prefix_ids": torch.tensor([group.prefix], dtype=torch.long), "suffix_ids": ids, "suffix_mask": own,
                "targets": targets, "weights": torch.tensor(group.weights, dtype=torch.float32),
                "answers": torch.tensor(group.answers or [-1] * len(group.suffixes), dtype=torch.long),
                "relevant": torch.tensor(group.relevant or [False] * len(group.suffixes), dtype=torch.bool),
                "offsets": torch.tensor(group.offsets or [0.0] * len(group.suffixes), dtype=torch.float32)}


def _one_group(batch: list[dict]) -> dict:
    if len(batch) != 1:
        raise ValueError("the shared-prefix trainer takes one question group per batch")
    return batch[0]


class SharedPrefixTrainer(Trainer):
    """A ``transformers.Trainer`` whose batches are :class:`QuestionGroup` tensors: the shared prefix runs once, its
    cache is repeated for the group's candidates, and the loss is the class-weighted completion cross-entropy, plus
    optionally a list-wise term over the question's candidates.

    The list-wise term is the softmax cross-entropy of the positives among the question's candidates, on the margin
    ``logit(yes) - logit(no)`` at each answer position (the quantity P(relevant) is a monotone function of, so the
    ranking serving makes): ``-log(sum over positives of softmax(margins))``, for groups with both classes. With
    per-candidate ``offsets`` (the first-stage retriever's normalised score, scaled) the softmax is over
    ``margins + offsets``: the term then trains the ranking stage 1 is fused into, so its gradient is largest
    where the retriever's order is wrong and stage 1 learns the signal the retriever lacks.

    Args:
        pairs_per_group: The mean number of candidates per group: the loss of a group is its weighted sum over
            candidates divided by it, so every pair weighs the same whatever the size of its group.
        listwise_weight: Weight of the list-wise term (0: point-wise only, exactly SFT's loss).
        answer_ids: ``(yes, no)`` token ids (needed with ``listwise_weight``).
        *args, **kwargs: Those of ``transformers.Trainer`` (``data_collator`` is set here).
    """

    def __init__(self, *args, pairs_per_group: float = 1.0, listwise_weight: float = 0.0, answer_ids: tuple[int, int] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, data_collator=_one_group, **kwargs)
        self.pairs_per_group = pairs_per_group
        self.listwise_weight = listwise_weight
        self.answer_ids = answer_ids

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        prefix, ids, own = inputs["prefix_ids"], inputs["suffix_ids"], inputs["suffix_mask"]
        targets, weights = inputs["targets"], inputs["weights"]
        n_prefix, batch = prefix.shape[1], ids.shape[0]
        cache_name = _cache_argument(model)
        out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(batch)  # the gradient reaches the shared tokens through every candidate
        rows, columns = (targets != -100).nonzero(as_tuple=True)
        keep = torch.unique(columns)  # only positions that predict a completion token are projected onto the vocabulary
        mask = torch.cat([torch.ones((batch, n_prefix), dtype=own.dtype, device=own.device), own], dim=1)
        positions = torch.arange(n_prefix, n_prefix + ids.shape[1], device=ids.device).unsqueeze(0).expand(batch, -1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep,
                       **{cache_name: cache}).logits
        index = torch.searchsorted(keep, columns)
        token_loss = torch.nn.functional.cross_entropy(logits[rows, index].float(), targets[rows, columns], reduction="none")
        per_pair = torch.zeros(batch, device=token_loss.device).index_add(0, rows, token_loss)
        per_pair = per_pair / (targets != -100).sum(dim=1).clamp(min=1)
        loss = (per_pair * weights).sum() / self.pairs_per_group
        relevant, answers = inputs.get("relevant"), inputs.get("answers")
        if self.listwise_weight and relevant is not None and bool(relevant.any()) and not bool(relevant.all()) and bool((answers > 0).all()):
            where = torch.searchsorted(keep, answers - 1)  # the position predicting each answer token
            pair = logits[torch.arange(batch, device=logits.device), where][:, list(self.answer_ids)].float()
            margins = pair[:, 0] - pair[:, 1]
            if inputs.get("offsets") is not None:  # the retriever's part of the fused score: train what it misses
                margins = margins + inputs["offsets"].to(margins.device)
            listwise = torch.logsumexp(margins, dim=0) - torch.logsumexp(margins[relevant], dim=0)
            loss = loss + self.listwise_weight * listwise
        return (loss, {"logits": logits}) if return_outputs else loss


def _cache_argument(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values``: the model's name for a KV cache input."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def shared_prefix_warm_start(model, tokenizer, groups: Sequence[QuestionGroup], config, peft_config=None,
                             output_dir: str | None = None, callbacks: Sequence[Any] = ()) -> tuple[Any, list[dict]]:
    """Train ``model`` on question groups: ``config.sft_epochs`` whole passes (else ``config.sft_max_steps`` steps) of
    ``config.sft_questions_per_step`` questions each, at ``config.sft_learning_rate``.

    Args:
        model: The starting model (a ``PeftModel`` to continue an adapter, or a plain model).
        tokenizer: Its tokenizer (the pad id).
        groups: From :func:`question_groups`.
        config: The stage config (``sft_*``, ``seed``, precision and device settings).
        peft_config: A ``LoraConfig`` to create a fresh adapter (None: train ``model`` as it is).
        output_dir: Where the trainer may write (nothing is saved there by this function).
        callbacks: More trainer callbacks (e.g. a progress bar).

    Returns:
        ``(model, log_history)``.
    """
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if not groups:
        raise ValueError("no question groups to warm-start on (no training question has a positive?)")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    per_step = config.sft_questions_per_step
    epochs = config.sft_epochs > 0
    steps = config.sft_max_steps if not epochs else max(1, round(len(groups) * config.sft_epochs / per_step))
    args = TrainingArguments(
        output_dir=output_dir or f"{config.output_dir}/sft-run", max_steps=-1 if epochs else steps,
        num_train_epochs=config.sft_epochs if epochs else 1, per_device_train_batch_size=1, gradient_accumulation_steps=per_step,
        learning_rate=config.sft_learning_rate, lr_scheduler_type="linear" if epochs else "constant_with_warmup",
        warmup_steps=max(1, steps // 20) if epochs else min(5, steps // 5), logging_steps=max(1, steps // 10), save_strategy="no",
        report_to="none", seed=config.seed, bf16=config.bf16, fp16=config.fp16, use_cpu=config.use_cpu, remove_unused_columns=False,
        disable_tqdm=True, dataloader_pin_memory=config.dataloader_pin_memory, label_names=[],
        ddp_find_unused_parameters=config.ddp_find_unused_parameters)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from ..inference.scoring import answer_token_ids

    trainer = SharedPrefixTrainer(model=model, args=args, train_dataset=_Groups(groups, pad),
                                  pairs_per_group=sum(len(g.suffixes) for g in groups) / len(groups),
                                  listwise_weight=getattr(config, "sft_listwise_weight", 0.0),
                                  answer_ids=tuple(answer_token_ids(tokenizer)))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train()
    return trainer.model, list(trainer.state.log_history)
