"""A LlamaIndex LLM over a loaded transformers model (text in, text out), for LlamaIndex components that need one."""

from __future__ import annotations

from typing import Any, Optional

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.custom import CustomLLM

from .generation import generate
from .loading import LoadedModel, load_model


class TransformersLLM(CustomLLM):
    """Greedy completion with a chat model: the prompt is sent as one user turn through the chat template.

    Args:
        model: Hub id, directory, ``.gguf``, adapter directory, ``"smollm2"``, or an already loaded model to share.
        max_new_tokens: Generation budget (also reported as ``num_output``).
        context_window: Reported context window.
        device: Torch device (when loading by name).
        dtype: Model dtype (when loading by name).

    Example:
        >>> llm = TransformersLLM(model="smollm2", max_new_tokens=128)
        >>> reranker = LLMRerank(llm=llm, top_n=5)
    """

    model: str = Field(default="smollm2", description="Hub id, directory, .gguf, adapter directory or 'smollm2'.")
    max_new_tokens: int = Field(default=256, gt=0, description="Tokens generated per completion.")
    context_window: int = Field(default=8192, gt=0, description="Context window reported to LlamaIndex.")
    device: str = Field(default="cpu", description="Torch device.")
    dtype: str = Field(default="auto", description="Model dtype.")

    _loaded: LoadedModel = PrivateAttr()

    def __init__(self, model: str | LoadedModel = "smollm2", *, max_new_tokens: int = 256, context_window: int = 8192,
                 device: str = "cpu", dtype: str = "auto") -> None:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
        super().__init__(model=loaded.name, max_new_tokens=max_new_tokens, context_window=context_window,
                         device=str(loaded.device), dtype=str(loaded.model.dtype).replace("torch.", ""))
        self._loaded = loaded

    @classmethod
    def class_name(cls) -> str:
        return "TransformersLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens, model_name=self.model, is_chat_model=False)

    def _prompt(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        return self._loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = generate(self._loaded, [self._prompt(prompt)], max_new_tokens=self.max_new_tokens)[0]
        return CompletionResponse(text=text)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        from threading import Thread

        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self._loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = Thread(target=generate, args=(self._loaded, [self._prompt(prompt)]),
                        kwargs={"max_new_tokens": self.max_new_tokens, "streamer": streamer}, daemon=True)
        thread.start()
        text = ""
        for delta in streamer:
            text += delta
            yield CompletionResponse(text=text, delta=delta)
        thread.join()


def as_llm(loaded: LoadedModel, max_new_tokens: int = 256, context_window: Optional[int] = None) -> TransformersLLM:
    """Wrap an already loaded model as a LlamaIndex LLM (no second copy of the weights)."""
    return TransformersLLM(loaded, max_new_tokens=max_new_tokens, **({"context_window": context_window} if context_window else {}))
