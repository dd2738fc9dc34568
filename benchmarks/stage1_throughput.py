"""Stage-1 throughput: candidates scored per second by our filter against two baselines on the same model.

Methods, each on the same model object and the same retrieved nodes (half images, half ~100-token texts):

* ``ours``: ``Stage1RelevanceFilter`` — one batched forward pass per ``batch_size`` candidates, P(yes) from logits;
* ``llmrerank``: LlamaIndex's ``LLMRerank`` (10 nodes per prompt, its default) driving the same model through
  ``TransformersLLM``; it sends node text only (LLMRerank cannot pass images), and generates at most
  ``--llmrerank-tokens`` tokens per batch (enough to list a few "Doc: n, Relevance: m" lines);
* ``generate``: one ``generate()`` per candidate on our stage-1 prompt, ``--generate-tokens`` new tokens (the
  ``<answer>yes</answer>`` format needs 5).

Random weights never emit an end-of-sequence token, so both generating baselines run to their token budget,
which is set to the least their output format needs. Also checks that batched scores equal unbatched ones
(float32). Prints a table and a last line ``speedup_vs_llmrerank=<x> speedup_vs_generate=<y>`` (the smallest
speedups over the measured configurations).

    python benchmarks/stage1_throughput.py                       # tiny Qwen2-VL, 1x20 and 8x20
    python benchmarks/stage1_throughput.py --real --queries 1    # + real Qwen2-VL-2B architecture (bf16)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHARED_QWEN2_VL = Path(__file__).resolve().parents[2] / "shared" / "model-configs" / "Qwen2-VL-2B-Instruct"
WORDS = "olympic city river museum harvest engine orbit library market violin glacier protein canyon".split()


def make_nodes(workdir: Path, n: int, seed: int, image_side: int = 448, images: bool = True):
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode
    from PIL import Image

    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        if images and i % 2:
            path = workdir / f"img_{seed}_{i}.png"
            Image.new("RGB", (image_side, image_side), tuple(rng.randrange(256) for _ in range(3))).save(path)
            node = ImageNode(image_path=str(path), text=f"Caption: a photo of a {rng.choice(WORDS)}")
        else:
            node = TextNode(text=" ".join(rng.choice(WORDS) for _ in range(80)))  # ~100 tokens
        nodes.append(NodeWithScore(node=node, score=rng.random()))
    return nodes


def build_real_size(workdir: Path, dtype: str) -> Path:
    """The real Qwen2-VL-2B config, processor and tokenizer, random weights (saved once, loaded by path)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out = workdir / "qwen2-vl-2b-random"
    shutil.copytree(SHARED_QWEN2_VL, out)
    torch.set_default_dtype({"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype])
    Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_pretrained(out)).save_pretrained(out)
    torch.set_default_dtype(torch.float32)
    return out


def time_ours(loaded, queries, batch_size):
    from mmrag_agent.postprocessors.stage1 import Stage1RelevanceFilter

    stage1 = Stage1RelevanceFilter(loaded, top_n=5, batch_size=batch_size)
    started = time.perf_counter()
    for query, nodes in queries:
        stage1.postprocess_nodes(nodes, query_str=query)
    return time.perf_counter() - started


def time_llmrerank(loaded, queries, max_new_tokens):
    from llama_index.core.postprocessor import LLMRerank

    from mmrag_agent.models.llm import as_llm

    reranker = LLMRerank(llm=as_llm(loaded, max_new_tokens=max_new_tokens), top_n=5, choice_batch_size=10)
    started = time.perf_counter()
    for query, nodes in queries:
        try:
            reranker.postprocess_nodes(nodes, query_str=query)
        except (ValueError, IndexError):
            pass  # random weights write unparsable choices; the time is what is measured
    return time.perf_counter() - started


def time_generate(loaded, queries, max_new_tokens):
    from mmrag_agent.inference import YesNoScorer
    from mmrag_agent.postprocessors.stage1 import node_to_candidate

    scorer = YesNoScorer(loaded, batch_size=1)
    started = time.perf_counter()
    for query, nodes in queries:
        for item in nodes:
            candidate = node_to_candidate(item.node)
            prompt = scorer.prompt(query, candidate).removesuffix("<answer>")
            scorer.generate([prompt], [candidate.image], max_new_tokens=max_new_tokens)
    return time.perf_counter() - started


def equivalence(loaded, query, nodes) -> float:
    from mmrag_agent.inference import YesNoScorer
    from mmrag_agent.postprocessors.stage1 import node_to_candidate

    candidates = [node_to_candidate(n.node) for n in nodes]
    batched = YesNoScorer(loaded, batch_size=8).score(query, candidates)
    single = YesNoScorer(loaded, batch_size=1).score(query, candidates)
    return max(abs(a - b) for a, b in zip(batched, single))


def run_config(label, model_dir, dtype, workloads, args, workdir, rows, ratios, images=True):
    from mmrag_agent.models import load_model

    loaded = load_model(model_dir, dtype=dtype, max_pixels=args.image_side ** 2)
    for n_queries in workloads:
        queries = [(f"Which {random.Random(q).choice(WORDS)} is described here?",
                    make_nodes(workdir, args.candidates, q, args.image_side, images=images)) for q in range(n_queries)]
        time_ours(loaded, queries[:1], args.batch_size)  # warm-up
        n = n_queries * args.candidates
        ours = time_ours(loaded, queries, args.batch_size)
        llm = time_llmrerank(loaded, queries, args.llmrerank_tokens)
        gen = time_generate(loaded, queries, args.generate_tokens)
        for method, seconds in (("ours", ours), ("llmrerank", llm), ("generate", gen)):
            rows.append((label, f"{n_queries}x{args.candidates}", method, seconds, n / seconds))
        ratios.append((llm / ours, gen / ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 8], help="workloads: queries per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--llmrerank-tokens", type=int, default=48)
    parser.add_argument("--generate-tokens", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="also the real Qwen2-VL-2B architecture (needs ../shared)")
    parser.add_argument("--real-dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny-model factory is test scaffolding
    from tiny_models import build_tiny_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="mmrag-stage1-bench-"))
    rows, ratios = [], []
    try:
        tiny = build_tiny_model("qwen2_vl", workdir / "tiny")
        from mmrag_agent.models import load_model

        query, nodes = "Which city is described here?", make_nodes(workdir, args.candidates, 99, args.image_side)
        checks = [("tiny Qwen2-VL", equivalence(load_model(tiny, dtype="float32", max_pixels=args.image_side ** 2), query, nodes))]
        run_config("tiny Qwen2-VL, images+texts", tiny, "float32", args.queries, args, workdir, rows, ratios)
        run_config("tiny Qwen2-VL, texts", tiny, "float32", args.queries, args, workdir, rows, ratios, images=False)
        tiny_text = build_tiny_model("qwen2", workdir / "tiny-text")
        run_config("tiny Qwen2 text, texts", tiny_text, "float32", args.queries, args, workdir, rows, ratios, images=False)
        if args.real:
            if not SHARED_QWEN2_VL.is_dir():
                raise SystemExit(f"--real needs {SHARED_QWEN2_VL}")
            real = build_real_size(workdir, args.real_dtype)
            run_config(f"Qwen2-VL-2B {args.real_dtype}, images+texts", real, args.real_dtype, args.queries, args, workdir, rows, ratios)
            run_config(f"Qwen2-VL-2B {args.real_dtype}, texts", real, args.real_dtype, args.queries, args, workdir, rows, ratios, images=False)

        print(f"\n'images+texts': half {args.image_side}x{args.image_side} images, half ~100-token texts (LLMRerank sees only the"
              f" images' captions); 'texts': ~100-token texts only (identical inputs for all three); torch threads {torch.get_num_threads()}; "
              f"llmrerank budget {args.llmrerank_tokens} tokens/batch, generate budget {args.generate_tokens} tokens/candidate\n")
        print(f"{'model, candidates':<36} {'workload':>8} {'method':>10} {'seconds':>9} {'cand/s':>9}")
        for label, workload, method, seconds, rate in rows:
            print(f"{label:<36} {workload:>8} {method:>10} {seconds:>9.2f} {rate:>9.1f}")
        for label, diff in checks:
            print(f"batched vs unbatched max |dP| ({label}, float32): {diff:.2e}  {'OK' if diff <= 1e-4 else 'FAIL'}")
        print(f"\nspeedup_vs_llmrerank={min(r[0] for r in ratios):.1f} speedup_vs_generate={min(r[1] for r in ratios):.1f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
