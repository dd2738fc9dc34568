"""Index a folder of documents and images, then retrieve text and images for a question.

    python examples/index_folder.py [FOLDER] [QUESTION]

Defaults to the demo folder bundled with the package (mmrag_agent/data/demo_docs). Runs offline: all-MiniLM-L6-v2 for text, and image-as-text for
images unless CLIP weights are available (pass image_model="openai/clip-vit-base-patch32" or a directory).
"""

import sys
import tempfile
from pathlib import Path

from llama_index.core.schema import ImageNode

from mmrag_agent.data import demo_docs
from mmrag_agent.indexing import build_index

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else demo_docs()
question = sys.argv[2] if len(sys.argv) > 2 else "How did revenue change over the year?"

# The store defaults to FOLDER/.mmrag; a temporary one keeps the example folder clean.
index = build_index(folder, store=Path(tempfile.mkdtemp()) / "store")
report = index.indexing_report
print(report.summary())
for failure in report.failed:
    print(f"  not indexed: {failure.path}: {failure.reason}")

retriever = index.as_retriever(similarity_top_k=3, image_similarity_top_k=2)
for hit in retriever.retrieve(question):
    kind = "image" if isinstance(hit.node, ImageNode) else "text "
    print(f"{kind} {hit.score:.3f} {hit.node.metadata['rel_path']}: {' '.join(hit.node.get_content().split())[:90]}")
