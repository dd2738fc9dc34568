"""Turn a discovered file into LlamaIndex nodes with deterministic ids and controlled metadata.

What is embedded is chosen here, not left to LlamaIndex defaults: a text chunk embeds its text and title
only (never paths or hashes); an image embeds its pixels (CLIP) or its text surrogate (image-as-text).
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import ImageNode, NodeRelationship, RelatedNodeInfo, TextNode

from .discovery import FoundFile
from ..media import DEFAULT_MAX_IMAGE_PIXELS, LoadedImage, load_image
from .readers import READERS, FileRejected, ParsedDocument, read_pdf
from .store import document_id, point_id
from .surrogates import build_surrogate

#: Metadata keys that are bookkeeping: never embedded, never shown to an LLM.
BOOKKEEPING_KEYS = ["file_path", "rel_path", "content_key", "chunk_index", "n_chunks", "encoding", "sha256",
                    "width", "height", "surrogate_sources", "file_type", "image_mimetype"]


@dataclass
class PreparedFile:
    """A discovered file with its hash, its content key and whatever was already parsed of it."""

    found: FoundFile
    sha256: str
    content_key: str = ""
    parsed: ParsedDocument | None = None
    caption: str = ""
    references_text: str = ""
    warnings: list[str] = field(default_factory=list)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(sha256: str, *parts: str) -> str:
    """The key that changes whenever anything that shapes a file's points changes."""
    return hashlib.sha256("\x1f".join((sha256, *parts)).encode()).hexdigest()[:32]


def parse_document(found: FoundFile, data: bytes, root: Path, ocr: Callable | None) -> ParsedDocument:
    if not data:
        raise FileRejected("empty file (0 bytes); add content or remove the file")
    suffix = found.path.suffix.lower()
    if suffix == ".pdf":
        return read_pdf(found.path, data, root, ocr=ocr)
    return READERS[suffix](found.path, data, root)


class NodeFactory:
    """Builds the nodes of one file (text chunks, or one image node).

    Args:
        root: The indexed folder.
        chunk_size: Tokens per text chunk (LlamaIndex ``SentenceSplitter``).
        chunk_overlap: Tokens shared by consecutive chunks.
        tokenizer: Counts tokens for chunking (default: tiktoken); ``tokenizer_name`` names it in content keys.
        max_image_pixels: Decompression-bomb guard for images.
        ocr: ``ocr(image) -> str`` or None.
    """

    def __init__(self, root: Path, chunk_size: int = 512, chunk_overlap: int = 64,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, ocr: Callable | None = None,
                 tokenizer: Callable[[str], list] | None = None, tokenizer_name: str = "tiktoken") -> None:
        self.root = root
        self.splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=tokenizer)
        self.max_image_pixels = max_image_pixels
        self.ocr = ocr
        self.text_settings = f"chunk={chunk_size}/{chunk_overlap}/{tokenizer_name}"
        self.image_settings = f"ocr={'on' if ocr else 'off'}"

    def key_for(self, prepared: PreparedFile) -> str:
        if prepared.found.kind == "image":
            return content_key(prepared.sha256, self.image_settings, prepared.caption, prepared.references_text)
        return content_key(prepared.sha256, self.text_settings)

    def _base_metadata(self, prepared: PreparedFile, index: int, total: int) -> dict:
        found = prepared.found
        return {
            "file_path": str(found.path),
            "rel_path": found.rel,
            "file_name": found.path.name,
            "file_type": found.path.suffix.lower().lstrip("."),
            "content_key": prepared.content_key,
            "sha256": prepared.sha256,
            "chunk_index": index,
            "n_chunks": total,
        }

    def text_nodes(self, prepared: PreparedFile, data: bytes) -> list[TextNode]:
        parsed = prepared.parsed or parse_document(prepared.found, data, self.root, self.ocr)
        prepared.warnings.extend(parsed.warnings)
        # the title is embedded with each chunk, so it counts against the embedding window
        title = f"title: {parsed.title}" if parsed.title else ""
        chunks = [(chunk, extra) for text, extra in parsed.sections
                  for chunk in self.splitter.split_text_metadata_aware(text, title) if chunk.strip()]
        if not chunks:
            raise FileRejected("no text left after parsing; add content or remove the file")
        nodes = []
        for i, (chunk, extra) in enumerate(chunks):
            metadata = self._base_metadata(prepared, i, len(chunks)) | extra
            if parsed.title:
                metadata["title"] = parsed.title
            if parsed.encoding and parsed.encoding not in ("utf-8", "ascii"):
                metadata["encoding"] = parsed.encoding
            nodes.append(TextNode(
                id_=point_id(prepared.found.rel, prepared.content_key, i),
                text=chunk,
                metadata=metadata,
                excluded_embed_metadata_keys=[k for k in metadata if k != "title"],
                excluded_llm_metadata_keys=[k for k in metadata if k in BOOKKEEPING_KEYS],
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(prepared.found.rel))},
            ))
        return nodes

    def image_node(self, prepared: PreparedFile, data: bytes) -> tuple[ImageNode, LoadedImage]:
        loaded = load_image(io.BytesIO(data), max_pixels=self.max_image_pixels)
        ocr_text = self.ocr(loaded.image) if self.ocr else ""
        surrogate = build_surrogate(prepared.found.rel, prepared.caption, prepared.references_text, loaded.exif_description, ocr_text)
        if not surrogate.sources:
            surrogate.sources["file_name"] = prepared.found.path.name
        mimetype = mimetypes.guess_type(prepared.found.path.name)[0] or "image/" + (loaded.format or "png").lower()
        metadata = self._base_metadata(prepared, 0, 1) | {
            "width": loaded.width,
            "height": loaded.height,
            "image_mimetype": mimetype,
            "surrogate_sources": ",".join(surrogate.sources),
        }
        if loaded.exif_orientation not in (None, 1):
            metadata["exif_orientation"] = loaded.exif_orientation
        node = ImageNode(
            id_=point_id(prepared.found.rel, prepared.content_key, 0),
            text=surrogate.text,
            image_path=str(prepared.found.path),
            image_mimetype=mimetype,
            metadata=metadata,
            excluded_embed_metadata_keys=list(metadata),
            excluded_llm_metadata_keys=[k for k in metadata if k in BOOKKEEPING_KEYS or k == "exif_orientation"],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(prepared.found.rel))},
        )
        return node, loaded
