"""Training configurations of the two GRPO stages: ``trl.GRPOConfig`` + ``trl.ModelConfig`` + the stage fields.

Why this shape (TRL's own building blocks, used as TRL's scripts use them):

* A stage config **is** a ``trl.GRPOConfig``: every TRL / transformers training field (distributed, precision,
  vLLM, logging, checkpoints ...) is available and reaches ``GRPOTrainer`` unchanged.
* It **is** a ``trl.ModelConfig`` too: the model and LoRA fields carry TRL's names (``model_name_or_path``,
  ``dtype``, ``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``, ``use_rslora``,
  ``use_dora``, ``lora_modules_to_save`` ...), so ``trl.get_peft_config(config)`` builds the LoRA adapter config
  (:func:`mmrag_agent.finetune.policy.lora_config`) and a YAML recipe written for ``trl grpo`` reads the same
  here. TRL's scripts keep ``ModelConfig`` as a separate object; mixing it in keeps one object per run
  (``train_stage1(config)``). Its bitsandbytes and revision fields are refused: the model loader does not take
  them, and a field that is silently ignored is worse than an error.
* Files and command lines are parsed by ``trl.TrlParser`` (an ``HfArgumentParser``: one ``--field value`` option
  per dataclass field, typed from the annotations; ``--config FILE.yaml`` whose keys become the defaults; an
  ``env:`` mapping in the file sets environment variables). :meth:`StageConfig.from_args` only adds what TRL
  leaves to its caller: one-line errors, and unknown fields named with the closest real ones.
  ``HfArgumentParser`` alone has no ``--config`` file; TRL's parser has, so it is the one used.

On top of TRL the stage configs add the fields of the method (data, held-out split, K, permutations, negatives,
reward weights, SFT warm start and its format probe, assistant prefix, reasoning mode, image resolution,
held-out evaluation), each with ``help`` metadata, and change a few defaults: ``beta`` 0.04 (TRL: 0.0), LoRA on
(``use_peft``) over the attention and MLP projections, the learning rate 1e-5 with LoRA / 1e-6 for full
fine-tuning, ``max_completion_length`` 16 for stage 1 (256 in reasoning mode) and 256 for stage 2,
``logging_steps`` 1, ``bf16`` only where a CUDA device supports it, pinned loader memory only with CUDA, and the assistant prefix of
:mod:`mmrag_agent.format` (``<answer>`` for stage 1, ``<think>`` for stage 1 with reasoning and for stage 2; an
explicit ``""`` means no prefix). Values left as ``None`` are resolved in ``__post_init__`` and can be read back.

Example:
    >>> config = Stage1Config.from_args(["--config", "stage1.yaml", "--data", "train.jsonl", "--max_steps", "200"])
    >>> config.learning_rate, config.max_completion_length, config.assistant_prefix
    (1e-05, 16, '<answer>')
    >>> Stage2Config(data="train.jsonl", stage1_output="runs/s1", output_dir="runs/s2").assistant_prefix
    '<think>'
"""

from __future__ import annotations

import difflib
from enum import Enum
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence

from trl import GRPOConfig, ModelConfig, TrlParser

from ..format import STAGE1_PREFIX, STAGE1_REASONING_PREFIX, STAGE2_PREFIX

__all__ = ["DEFAULT_LORA_TARGETS", "ConfigError", "Stage1Config", "Stage2Config", "StageConfig", "stage_fields"]

#: Attention and MLP projections of the language model (Qwen2 / Qwen2-VL / Qwen2.5-VL / Llama / SmolLM2).
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Vision towers of VLMs, excluded from LoRA by default (Qwen2.5-VL's vision MLP also has ``gate_proj`` ...).
VISION_MODULES_REGEX = r".*(visual|vision_tower|vision_model|image_encoder)\..*"
#: ``trl.ModelConfig`` fields this trainer honours (the others are refused when changed from their defaults).
MODEL_FIELDS = ("model_name_or_path", "dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
                "lora_target_modules", "lora_target_parameters", "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora")
_UNSUPPORTED_MODEL_FIELDS = {"model_revision": "main", "load_in_8bit": False, "load_in_4bit": False, "bnb_4bit_quant_type": "nf4",
                             "use_bnb_nested_quant": False, "bnb_4bit_quant_storage": None}


class ConfigError(ValueError):
    """A config that cannot be built from a file or a command line; the message is one line naming the field."""


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class StageConfig(GRPOConfig, ModelConfig):
    """Fields shared by both stages, on top of ``trl.GRPOConfig`` and ``trl.ModelConfig`` (see the module docstring).

    Subclasses set :attr:`stage` and their own defaults; use :class:`Stage1Config` or :class:`Stage2Config`.
    """

    stage: ClassVar[int] = 0

    # ---- overridden TRL / transformers defaults
    learning_rate: float | None = field(default=None, metadata=_help(
        "AdamW learning rate. Default (null): 1e-5 with LoRA, 1e-6 for full fine-tuning."))
    beta: float = field(default=0.04, metadata=_help("KL coefficient against the reference policy (the method's 0.04; TRL's default is 0.0)."))
    max_completion_length: int | None = field(default=None, metadata=_help(
        "Most tokens generated per completion. Default (null): stage 1 16 (256 with reasoning), stage 2 256."))
    logging_steps: float = field(default=1, metadata=_help("Log every N optimizer steps (1: every step reaches the curves)."))
    bf16: bool | None = field(default=None, metadata=_help(
        "bf16 mixed precision. Default (null): on only where a CUDA device supports bf16 (off on CPU)."))
    dataloader_pin_memory: bool | None = field(default=None, metadata=_help(
        "Pin data-loader memory. Default (null): only when training on a CUDA device (pinning needs one)."))

    # ---- model and LoRA (trl.ModelConfig fields; defaults changed where the method differs)
    model_name_or_path: str | None = field(default=None, metadata=_help(
        "Base model: hub id, directory, .gguf, PEFT adapter directory or 'smollm2' (stage 1 default: 'smollm2')."))
    dtype: str = field(default="auto", metadata=_help(
        "Weights dtype when loading: auto (float32 on CPU, bfloat16 when training in bf16), float32, float16, bfloat16.",
        choices=["auto", "float32", "float16", "bfloat16"]))
    use_peft: bool = field(default=True, metadata=_help("Train a LoRA adapter (PEFT); false: full fine-tuning."))
    lora_target_modules: list[str] | None = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata=_help(
        "Module names LoRA adapts (default: the language model's attention and MLP projections; 'all-linear' for all)."))
    lora_exclude_vision: bool = field(default=True, metadata=_help("Keep LoRA off the vision tower of VLMs."))
    lora_layers: int | None = field(default=None, metadata=_help(
        "LoRA on the last N transformer layers only (null: every layer). The backward pass then stops at the lowest "
        "adapted layer: on a CPU, 10 of SmolLM2-135M's 30 layers train about twice as many pairs a second."))

    # ---- data
    data: str | None = field(default=None, metadata=_help("Training rerank examples (JSONL, one query a line)."))
    eval_data: str | None = field(default=None, metadata=_help(
        "Held-out rerank examples (JSONL). Without it, held_out_fraction of the data's questions are held out."))
    held_out_fraction: float = field(default=0.2, metadata=_help(
        "Fraction of the data's questions held out for evaluation when eval_data is not given (split by qid)."))
    split_seed: int = field(default=0, metadata=_help("Seed of the train / held-out split by question."))
    max_train_queries: int | None = field(default=None, metadata=_help("Use at most this many training questions (null: all)."))
    max_eval_queries: int | None = field(default=None, metadata=_help("Evaluate on at most this many held-out questions (null: all)."))
    max_text_tokens: int = field(default=256, metadata=_help("Token budget of each candidate's text in a prompt."))
    with_images: bool | None = field(default=None, metadata=_help(
        "Show image candidates' pixels. Default (null): when the model is a vision-language model."))
    max_pixels: int = field(default=448 * 448, metadata=_help("Upper bound on an image's area (Qwen-VL processors)."))
    min_pixels: int | None = field(default=None, metadata=_help("Lower bound on an image's area (Qwen-VL processors)."))

    # ---- prompting
    assistant_prefix: str | None = field(default=None, metadata=_help(
        "Text the assistant turn is pre-filled with, in training and in serving (recorded in model_card.json); the "
        "rewards see prefix + completion. Default (null): '<answer>' for stage 1, '<think>' for stage 1 with reasoning "
        "and for stage 2. An empty string: no prefix."))

    # ---- rewards
    format_weight: float = field(default=0.1, metadata=_help("Weight of the format reward (the method's 0.1)."))
    extra_reward_funcs: list[str] | None = field(default=None, metadata=_help(
        "More reward functions as 'package.module:function' import paths, TRL signature f(completions, **columns)."))
    extra_reward_weights: list[float] | None = field(default=None, metadata=_help(
        "Weights of extra_reward_funcs (default: 1.0 each)."))

    # ---- SFT warm start and its format probe
    sft_warm_start: str = field(default="auto", metadata=_help(
        "Supervised warm start on gold-formatted targets before GRPO: auto (when the format probe fails), on, off.",
        choices=["auto", "on", "off"]))
    sft_max_steps: int = field(default=50, metadata=_help(
        "Optimizer steps of the SFT warm start (they come before, and on top of, the GRPO max_steps); "
        "sft_epochs > 0 replaces it."))
    sft_epochs: float = field(default=0.0, metadata=_help(
        "Whole passes of the SFT warm start over the training records (0: sft_max_steps steps instead). Stage 1 with "
        "a text model counts questions (all candidates of a question form one group); otherwise records."))
    sft_learning_rate: float | None = field(default=None, metadata=_help(
        "Learning rate of the SFT warm start. Default (null): 1e-4 with LoRA, 1e-5 for full fine-tuning."))
    sft_batch_size: int | None = field(default=None, metadata=_help("Batch size of the SFT warm start (default: per_device_train_batch_size)."))
    format_probe_prompts: int = field(default=8, metadata=_help("Training prompts the format probe samples from."))
    format_probe_generations: int = field(default=4, metadata=_help("Sampled completions per probe prompt (at `temperature`)."))
    format_probe_threshold: float = field(default=0.5, metadata=_help(
        "The probe fails (auto warm start runs) when fewer than this fraction of sampled completions are in format."))

    # ---- held-out evaluation
    eval_every: int = field(default=50, metadata=_help(
        "Evaluate on the held-out questions every N steps, plus before the first and after the last step (0: never)."))
    eval_batch_size: int = field(default=16, metadata=_help("Prompts per forward pass in the held-out evaluation."))
    curves: bool = field(default=True, metadata=_help("Write training_curves.png (reward, format rate, held-out P@1) to output_dir."))
    progress_bar: bool = field(default=True, metadata=_help(
        "Show progress bars (format probe, SFT warm start, GRPO with reward / format rate / held-out P@1, evaluations)."))

    def __post_init__(self):
        if isinstance(self.sft_warm_start, bool):  # YAML 1.1 reads a bare on / off as a boolean
            self.sft_warm_start = "on" if self.sft_warm_start else "off"
        if self.sft_warm_start not in ("auto", "on", "off"):
            raise ConfigError(f"sft_warm_start must be auto, on or off, got {self.sft_warm_start!r}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.sft_epochs < 0:
            raise ConfigError(f"sft_epochs must be >= 0, got {self.sft_epochs} (0: sft_max_steps steps instead)")
        if self.lora_layers is not None and self.lora_layers < 1:
            raise ConfigError(f"lora_layers must be a positive number of layers, got {self.lora_layers} (null: every layer)")
        if self.sft_max_steps < 1:
            raise ConfigError(f"sft_max_steps must be at least 1, got {self.sft_max_steps} (sft_warm_start=off skips the warm start)")
        if self.extra_reward_weights is not None and len(self.extra_reward_weights) != len(self.extra_reward_funcs or []):
            raise ConfigError("extra_reward_weights needs one weight per extra_reward_funcs entry")
        for name, default in _UNSUPPORTED_MODEL_FIELDS.items():
            if getattr(self, name) != default:
                raise ConfigError(f"{name} is not supported by mmrag's trainer (its model loader takes no revision or "
                                  f"bitsandbytes settings); leave it at {default!r}, or pass a local model directory")
        if self.lora_target_modules == ["all-linear"]:
            self.lora_target_modules = "all-linear"  # PEFT's keyword is a string, a command line gives a list
        if self.learning_rate is None:
            self.learning_rate = 1e-5 if self.use_peft else 1e-6
        if self.sft_learning_rate is None:
            self.sft_learning_rate = 1e-4 if self.use_peft else 1e-5
        if self.max_completion_length is None:
            self.max_completion_length = self._default_completion_length()
        if self.assistant_prefix is None:
            self.assistant_prefix = self._default_prefix()
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _cuda(bf16=True)
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = not self.use_cpu and _cuda()
        if self.output_dir is None:
            self.output_dir = f"mmrag-stage{self.stage}"
        if self.activation_checkpointing is None and self.gradient_checkpointing is not None:
            self.activation_checkpointing = self.gradient_checkpointing  # TRL sets the alias transformers deprecates
        super().__post_init__()

    def _default_completion_length(self) -> int:
        return 256

    def _default_prefix(self) -> str:
        return STAGE2_PREFIX

    # ---- construction from files and command lines
    @classmethod
    def from_args(cls, args: Sequence[str] = ()) -> "StageConfig":
        """Build a config with ``trl.TrlParser`` from ``--field value`` options and an optional ``--config FILE.yaml``.

        Later values win: the field defaults, then the YAML file's keys, then the options in the order given.
        Every field is an option (``--learning_rate 1e-4``, ``--use_peft false``, ``--lora_target_modules q_proj
        v_proj``, hyphens or underscores); ``--KEY=VALUE`` is one token, which is how a value may be empty
        (``--assistant_prefix=``) or start with a dash.

        Args:
            args: The command-line tokens (``mmrag train`` turns its named options into such tokens).

        Returns:
            The config, with ``None`` defaults resolved.

        Raises:
            ConfigError: A one-line message: an unknown field (with the closest names), a value of the wrong
                type, an unreadable or invalid YAML file, or a value the config rejects.

        Example:
            >>> Stage2Config.from_args(["--stage1_output", "runs/s1", "--k", "3", "--use_peft", "false"]).k
            3
        """
        import yaml

        parser = _StageParser(cls)
        args = list(args)
        parser.check_options(args)
        try:
            config, yaml_left, args_left = parser.parse_args_and_config(args, return_remaining_strings=True,
                                                                        separate_remaining_strings=True)
        except ConfigError:
            raise
        except yaml.YAMLError as exc:
            raise ConfigError(f"{parser.config_path}: not valid YAML ({_yaml_problem(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{parser.config_path}: cannot read the config file ({exc})") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(" ".join(str(exc).split())) from None
        if yaml_left or args_left:
            raise ConfigError(f"unexpected argument {(yaml_left or args_left)[0]!r}: options are --FIELD VALUE")
        return config

    def stage_summary(self) -> dict[str, Any]:
        """The stage fields and the main GRPO settings, JSON-serialisable (written to ``model_card.json``)."""
        keys = stage_fields(type(self)) + [
            "learning_rate", "beta", "num_generations", "temperature", "max_completion_length", "max_steps",
            "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "loss_type", "scale_rewards",
            "seed", "use_vllm", "bf16"]
        return {k: _jsonable(getattr(self, k)) for k in dict.fromkeys(keys)}

    def to_yaml(self) -> str:
        """The fields whose value differs from the stage's defaults, as YAML that ``--config`` reads back.

        Example:
            >>> print(Stage1Config(output_dir="runs/s1", max_steps=10).to_yaml(), end="")
            output_dir: runs/s1
            max_steps: 10
        """
        import yaml

        defaults = type(self)()
        changed = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
                   if f.init and getattr(self, f.name) != getattr(defaults, f.name)}
        return yaml.safe_dump(changed, sort_keys=False, allow_unicode=True, width=10_000)

    def warm_start_plan(self) -> str:
        """One line saying what runs before GRPO (the format probe, the SFT warm start, their length and how to change it).

        Example:
            >>> Stage1Config(output_dir="runs/s1").warm_start_plan()
            'SFT warm start: auto (runs 50 steps before GRPO if the format probe fails; --sft-steps to change, --sft off to skip)'
        """
        if self.sft_warm_start == "off":
            return "SFT warm start: off (no format probe; --sft auto to probe the format and warm-start if needed)"
        when = "if the format probe fails" if self.sft_warm_start == "auto" else "always"
        length = f"{self.sft_epochs:g} epochs" if self.sft_epochs > 0 else f"{self.sft_max_steps} steps"
        return (f"SFT warm start: {self.sft_warm_start} (runs {length} before GRPO {when}; "
                f"--sft-steps to change, --sft off to skip)")


@dataclass
class Stage1Config(StageConfig):
    """Stage-1 GRPO (point-wise yes/no relevance) on top of ``trl.GRPOConfig`` and ``trl.ModelConfig``.

    Every ``GRPOConfig`` field applies; the stage fields are documented in their ``help`` metadata.
    Rewards: ``accuracy_weight * relevance_accuracy + format_weight * format`` (gated accuracy),
    given to TRL as two reward functions with ``reward_weights``, so that TRL logs each one (the mean of
    the format reward is the format rate).

    Example:
        >>> config = Stage1Config(data="train.jsonl", model_name_or_path="smollm2", output_dir="runs/s1", max_steps=300)
        >>> train_stage1(config)
    """

    stage: ClassVar[int] = 1

    training_candidates: str = field(default="all", metadata=_help(
        "all: every candidate of every training question, the classes balanced by loss weights (the shared-prefix "
        "warm start) or by repeating positives (otherwise); sampled: the positives plus negatives_per_positive "
        "sampled negatives each (the method's 1:1).", choices=["all", "sampled"]))
    negatives_per_positive: int = field(default=1, metadata=_help(
        "Hard negatives sampled per positive with training_candidates=sampled (the method's 1:1)."))
    reasoning: bool = field(default=False, metadata=_help("Ask for <think>...</think> before <answer>yes|no</answer>."))
    accuracy_weight: float = field(default=1.0, metadata=_help("Weight of the gated relevance-accuracy reward (the method's 1.0)."))
    sft_shared_prefix: bool = field(default=True, metadata=_help(
        "Text models: the warm start runs each question once with all its candidates, the tokens they share (system "
        "prompt, instruction, question) computed once per question (the same loss as TRL's SFTTrainer, with class "
        "weights; about 2.5x fewer tokens). False: TRL's SFTTrainer on one sequence per candidate."))
    sft_listwise_weight: float = field(default=0.0, metadata=_help(
        "Shared-prefix warm start: weight of a list-wise term, the softmax cross-entropy of the positives among each "
        "question's candidates on logit(yes) - logit(no) (what ranking by P(relevant) orders); 0: point-wise SFT only."))
    sft_listwise_retrieval: float = field(default=0.0, metadata=_help(
        "Shared-prefix warm start with a list-wise term and a first_stage retriever: add this times the retriever's "
        "min-max normalised score (per question) to each candidate's margin in the list-wise term, so that it trains "
        "the ranking stage 1 is fused into and learns what the retriever misses (its largest gradients are where "
        "the retriever ranks a negative first). 0: the term ranks by stage 1 alone."))
    sft_questions_per_step: int = field(default=4, metadata=_help(
        "Shared-prefix warm start: questions (each with all its candidates) per optimizer step."))
    grpo_pool_factor: int = field(default=4, metadata=_help(
        "Dynamic sampling ahead of GRPO: score pool_factor x the prompts GRPO will take with the warm-started policy "
        "(one forward pass each) and keep, half positives and half negatives, those whose group of num_generations "
        "completions is likeliest to have mixed rewards, 1 - p^G - (1-p)^G with p the policy's probability of the "
        "right answer at the sampling temperature (groups without reward variance teach nothing). 0: off, GRPO "
        "samples the training pairs uniformly."))
    first_stage: str = field(default="embedding", metadata=_help(
        "Retriever the stage-1 score is fused with in serving (embedding: all-MiniLM-L6-v2, bm25, or none): after "
        "training, the fusion weight is fitted on the held-out questions against it and written to the model card "
        "with the held-out metrics of stage 1 alone, the retriever alone and the fusion (cross-fitted).",
        choices=["embedding", "bm25", "none"]))
    fusion_folds: int = field(default=10, metadata=_help(
        "Cross-fitting of the fusion weight: the held-out questions in this many folds (at most one per question); "
        "each fold is scored with the weight fitted on the others (the honest numbers); serving gets the weight "
        "fitted on all of them. With few folds each weight is fitted on a fraction of the questions, so the "
        "numbers depend on how the questions fall into folds (measured on 121 questions: 2 folds, P@1 0.298-0.380 "
        "over 10 fold assignments; 10 folds, 0.364-0.380)."))
    fusion_metric: str = field(default="mrr", metadata=_help(
        "Held-out metric the fusion weight maximises: mrr (smoother on a few dozen questions) or p@1.",
        choices=["mrr", "p@1"]))

    def __post_init__(self):
        if self.model_name_or_path is None:
            self.model_name_or_path = "smollm2"
        for name, allowed in (("training_candidates", ("all", "sampled")), ("first_stage", ("embedding", "bm25", "none")),
                              ("fusion_metric", ("mrr", "p@1"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.sft_listwise_retrieval < 0:
            raise ConfigError(f"sft_listwise_retrieval must be >= 0, got {self.sft_listwise_retrieval}")
        if self.fusion_folds < 2:
            raise ConfigError(f"fusion_folds must be at least 2 (fit on some folds, score the others), got {self.fusion_folds}")
        if self.sft_questions_per_step < 1 or self.grpo_pool_factor < 0:
            raise ConfigError("sft_questions_per_step must be >= 1 and grpo_pool_factor >= 0")
        super().__post_init__()

    def _default_completion_length(self) -> int:
        return 256 if self.reasoning else 16

    def _default_prefix(self) -> str:
        return STAGE1_REASONING_PREFIX if self.reasoning else STAGE1_PREFIX


@dataclass
class Stage2Config(StageConfig):
    """Stage-2 GRPO (list-wise rank + answer with reasoning) on top of ``trl.GRPOConfig`` and ``trl.ModelConfig``.

    The policy starts from the stage-1 output (``stage1_output``: its adapter or full model) unless
    ``init_from="base"``; the base model is ``model_name_or_path`` or, when unset, the base the stage-1 output was
    trained from. Rewards: format-gated ``rank_weight * rank_quality + answer_weight * answer_accuracy`` plus
    ``format_weight * format``, as three TRL reward functions with ``reward_weights``.

    Example:
        >>> config = Stage2Config(data="train.jsonl", stage1_output="runs/s1", output_dir="runs/s2", max_steps=300)
        >>> train_stage2(config)
    """

    stage: ClassVar[int] = 2

    stage1_output: str | None = field(default=None, metadata=_help("Output directory of stage-1 training to start from."))
    init_from: str = field(default="stage1", metadata=_help(
        "stage1: start from stage1_output (when given); base: start from the base model.", choices=["stage1", "base"]))
    k: int = field(default=5, metadata=_help("Candidates per prompt, K (the method's 5)."))
    permutations: int = field(default=3, metadata=_help("Shuffled candidate orders per question (the method's 3)."))
    rank_weight: float = field(default=1.0, metadata=_help("Weight of the rank-quality reward (the method's 1.0)."))
    answer_weight: float = field(default=1.0, metadata=_help("Weight of the answer-accuracy reward (the method's 1.0)."))
    answers_are_list: bool = field(default=False, metadata=_help(
        "Score several gold answers as one list answer (MultimodalQA list questions) instead of alternatives."))
    ranking_check_queries: int = field(default=60, metadata=_help(
        "After training, on this many held-out questions: the pipeline (stage1_output's fused stage 1, then stage 2 "
        "on its top k) ranked by stage 2 and by stage 1's order; the model card's ranking_check records both, and "
        "serving lets stage 2 reorder only when it ranked better (a reranker must not rank worse than its input). "
        "0 or no stage1_output: no check, and serving keeps the incoming order."))

    def __post_init__(self):
        if self.ranking_check_queries < 0:
            raise ConfigError(f"ranking_check_queries must be >= 0, got {self.ranking_check_queries}")
        if self.init_from not in ("stage1", "base"):
            raise ConfigError(f"init_from must be stage1 or base, got {self.init_from!r}")
        super().__post_init__()


def stage_fields(cls: type) -> list[str]:
    """Names of the fields a stage config adds to ``trl.GRPOConfig`` (or whose default it changes), in field order:
    the stage fields and the ``trl.ModelConfig`` fields the trainer honours.

    Example:
        >>> "lora_r" in stage_fields(Stage1Config), "beta" in stage_fields(Stage1Config), "load_in_4bit" in stage_fields(Stage1Config)
        (True, True, False)
    """
    declared = {name for klass in cls.__mro__ if isinstance(klass, type) and issubclass(klass, StageConfig)
                for name in vars(klass).get("__annotations__", {})}
    return [f.name for f in fields(cls) if f.name in declared or f.name in MODEL_FIELDS]


class _StageParser(TrlParser):
    """``TrlParser`` whose errors are exceptions (argparse would print usage and exit) and that names unknown fields."""

    def __init__(self, cls: type) -> None:
        super().__init__(cls, allow_abbrev=False, prog=cls.__name__)
        self.cls = cls
        self.names = [f.name for f in fields(cls) if f.init]
        self.config_path: str | None = None

    def error(self, message: str):
        raise ConfigError(message)

    def unknown(self, name: str, where: str) -> ConfigError:
        name = name.lstrip("-").split("=", 1)[0]
        own = stage_fields(self.cls)  # the stage's own fields are the likelier meaning, then TRL's
        close = difflib.get_close_matches(name.replace("-", "_"), own, n=3, cutoff=0.6)
        if len(close) < 3:
            close += difflib.get_close_matches(name.replace("-", "_"), [n for n in self.names if n not in own], n=3 - len(close))
        hint = f"; did you mean {', '.join(close)}?" if close else f"; {self.cls.__name__} has no such field"
        return ConfigError(f"unknown config field {name!r} {where}{hint}")

    def check_options(self, args: list[str]) -> None:
        if "--config" in args:
            index = args.index("--config")
            if index + 1 >= len(args):
                raise ConfigError("--config needs a YAML file")
            self.config_path = args[index + 1]
        for token in args:
            if token.startswith("--") and token != "--config" and token.split("=", 1)[0] not in self._option_string_actions:
                raise self.unknown(token, "on the command line")

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        for key in kwargs:
            if key not in self.names:
                raise self.unknown(str(key), f"in {self.config_path}")
        return super().set_defaults_with_config(**kwargs)


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _cuda(bf16: bool = False) -> bool:
    """A usable CUDA device (that supports bf16, with ``bf16``)."""
    try:
        import torch

        return torch.cuda.is_available() and (not bf16 or torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - no usable CUDA
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
