"""Turn a discovered file into LlamaIndex nodes with deterministic ids and controlled metadata.

What is embedded is chosen here, not left to LlamaIndex defaults: a text chunk embeds its text and title
only (never paths or hashes); an image embeds its pixels (CLIP) or its text surrogate (image-as-text).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import ImageNode, NodeRelationship, RelatedNodeInfo, TextNode

from ..media import DEFAULT_MAX_IMAGE_PIXELS, load_image
from .discovery import FoundFile, open_found
from .pdf import read_pdf
from .readers import READERS, FileRejected, ImageReference, ParsedDocument
from .store import document_id, point_id
from .streams import BLOCK_BYTES, HTML_SUFFIXES, MARKDOWN_SUFFIXES, WHOLE_FILE_BYTES, StreamedText, TextStream, scan_large_text
from .surrogates import MAX_SIDECAR_BYTES, build_surrogate, read_sidecar_bytes

#: Metadata keys that are bookkeeping: never embedded, never shown to an LLM.
BOOKKEEPING_KEYS = ["file_path", "rel_path", "content_key", "chunk_index", "n_chunks", "encoding", "sha256",
                    "width", "height", "surrogate_sources", "file_type", "image_mimetype"]
MARKUP_SUFFIXES = MARKDOWN_SUFFIXES + HTML_SUFFIXES
STREAMED_SUFFIXES = (".txt",) + MARKUP_SUFFIXES
#: A PDF or image is copied (and checked against its hash) in memory up to this size, else to a temporary file.
SNAPSHOT_IN_MEMORY = 64 << 20
#: Chunk text of one file kept in memory before the rest goes to a temporary file.
SPOOL_IN_MEMORY = 16 << 20
#: Longer side an image is decoded at when no model reads its pixels (the decode only checks the file).
VALIDATION_SIDE = 256


@dataclass
class PreparedFile:
    """A discovered file with its hash, its content key and what the first pass learned of it."""

    found: FoundFile
    sha256: str
    content_key: str = ""
    parsed: ParsedDocument | None = None  # a small Markdown/HTML file already parsed (kept within a budget)
    streamed: StreamedText | None = None  # a large text file: its encoding, title and image references
    title: str | None = None
    image_references: list[ImageReference] = field(default_factory=list)
    caption: str = ""
    references_text: str = ""
    encoding: str | None = None
    warnings: list[str] = field(default_factory=list)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(sha256: str, *parts: str) -> str:
    """The key that changes whenever anything that shapes a file's points changes."""
    return hashlib.sha256("\x1f".join((sha256, *parts)).encode()).hexdigest()[:32]


def parse_document(found: FoundFile, data: bytes | BinaryIO, root: Path, ocr: Callable | None) -> ParsedDocument:
    suffix = found.path.suffix.lower()
    if suffix == ".pdf":
        return read_pdf(found.path, data, root, ocr=ocr)
    if not data:
        raise FileRejected("empty file (0 bytes); add content or remove the file")
    return READERS[suffix](found.path, data, root)


def prepare_file(found: FoundFile, root: Path, on_bytes: Callable[[int], None] | None = None) -> PreparedFile:
    """First pass over one file: its SHA-256 (streamed), and for Markdown/HTML the title and image references.

    Raises:
        FileRejected, ImageRejected, OSError: The file cannot be used; the caller reports it.
    """
    suffix = found.path.suffix.lower()
    with open_found(found) as fh:
        if found.size > WHOLE_FILE_BYTES and suffix in STREAMED_SUFFIXES:
            sha, streamed = scan_large_text(_Counting(fh, on_bytes), suffix, found.path, root)
            item = PreparedFile(found, sha, streamed=streamed, title=streamed.title, image_references=streamed.image_references)
        elif suffix in MARKUP_SUFFIXES:
            data = read_exactly(fh, found.size)
            if on_bytes:
                on_bytes(len(data))
            item = PreparedFile(found, sha256_bytes(data))
            item.parsed = parse_document(found, data, root, None)
            item.title, item.image_references = item.parsed.title, item.parsed.image_references
        else:
            item = PreparedFile(found, hash_stream(fh, on_bytes))
    if found.kind == "image" and found.sidecar is not None:
        try:
            with open_found(found.sidecar) as fh:
                item.caption = read_sidecar_bytes(read_exactly(fh, min(found.sidecar.size, MAX_SIDECAR_BYTES), allow_more=True))
        except FileRejected as exc:
            raise FileRejected(f"its caption file {found.sidecar.rel}: {exc}") from None
    return item


def hash_stream(fh: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file object read block by block."""
    digest = hashlib.sha256()
    while block := fh.read(BLOCK_BYTES):
        digest.update(block)
        if on_bytes:
            on_bytes(len(block))
    return digest.hexdigest()


def read_exactly(fh: BinaryIO, size: int, allow_more: bool = False) -> bytes:
    """The file's ``size`` bytes; a file that grew since it was found is refused (unless ``allow_more``)."""
    data = fh.read(size + 1)
    if len(data) > size and not allow_more:
        raise FileRejected("file changed while being indexed; run the indexer again")
    return data[:size]


def snapshot(found: FoundFile, sha256: str, in_memory: int = SNAPSHOT_IN_MEMORY) -> BinaryIO:
    """A private copy of the file (in memory up to ``in_memory`` bytes, else a temporary file), checked against ``sha256``."""
    copy = tempfile.SpooledTemporaryFile(max_size=in_memory)
    digest = hashlib.sha256()
    with open_found(found) as fh:
        while block := fh.read(BLOCK_BYTES):
            digest.update(block)
            copy.write(block)
    if digest.hexdigest() != sha256:
        copy.close()
        raise FileRejected("file changed while being indexed; run the indexer again")
    copy.seek(0)
    return copy


class ChunkSpool:
    """The chunks of one file, in order: in memory up to ``in_memory`` bytes, then in a temporary file.

    A file's chunk count is part of every point's payload (it is how a run tells a complete file from one
    cut short), so all chunks of a file are produced before the first one is embedded; the spool keeps that
    from costing memory for very large files.
    """

    def __init__(self, in_memory: int = SPOOL_IN_MEMORY) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=in_memory)
        self.count = 0
        self.chars = 0

    def add(self, text: str, extra: dict) -> None:
        self._file.write(json.dumps([text, extra]).encode("ascii") + b"\n")
        self.count += 1
        self.chars += len(text)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        self._file.seek(0)
        for line in self._file:
            text, extra = json.loads(line)
            yield text, extra

    def close(self) -> None:
        self._file.close()


class _Counting:
    """A read-only file wrapper that reports bytes read (for progress)."""

    def __init__(self, fh: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self.fh, self.on_bytes = fh, on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        if self.on_bytes and data:
            self.on_bytes(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.on_bytes = None  # a second read of the same bytes is not progress
        return self.fh.seek(offset, whence)


def clean_text(text: str) -> str:
    """``text`` without lone surrogates (which no store or tokenizer accepts): each becomes U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


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

    def text_chunks(self, prepared: PreparedFile, on_bytes: Callable[[int], None] | None = None) -> ChunkSpool:
        """Read, check and chunk one text file (large files as a stream) into a :class:`ChunkSpool`.

        ``on_bytes`` is called with the bytes read so far of a streamed file (for progress display).

        Raises:
            FileRejected: Unreadable or changed content, or no text.
        """
        spool = ChunkSpool()
        try:
            if prepared.streamed is not None:
                title, sections = prepared.title, self._streamed_sections(prepared, on_bytes)
                if prepared.streamed.encoding not in ("utf-8", "ascii"):
                    prepared.encoding = prepared.streamed.encoding
            else:
                parsed = prepared.parsed or self._parse_whole(prepared)
                prepared.parsed = None  # the cached parse is used once
                prepared.warnings.extend(parsed.warnings)
                title, sections, prepared.encoding = parsed.title, parsed.sections, parsed.encoding
            prepared.title = title
            title_text = self._fitting_title(title)
            for text, extra in sections:
                for chunk in self.splitter.split_text_metadata_aware(clean_text(text), title_text):
                    if chunk.strip():
                        spool.add(chunk, extra)
            if not spool.count:
                raise FileRejected("no text left after parsing; add content or remove the file")
        except BaseException:
            spool.close()
            raise
        return spool

    def _parse_whole(self, prepared: PreparedFile) -> ParsedDocument:
        found = prepared.found
        if found.path.suffix.lower() == ".pdf":
            with snapshot(found, prepared.sha256) as copy:
                return parse_document(found, copy, self.root, self.ocr)
        with open_found(found) as fh:
            data = read_exactly(fh, found.size)
        if sha256_bytes(data) != prepared.sha256:
            raise FileRejected("file changed while being indexed; run the indexer again")
        return parse_document(found, data, self.root, self.ocr)

    def _streamed_sections(self, prepared: PreparedFile, on_bytes=None) -> Iterator[tuple[str, dict]]:
        with open_found(prepared.found) as fh:
            stream = TextStream(_Counting(fh, on_bytes), prepared.streamed, prepared.found.path.suffix.lower())
            for segment in stream.segments():
                yield segment, {}
        if stream.sha256.hexdigest() != prepared.sha256:
            raise FileRejected("file changed while being indexed; run the indexer again")

    def _fitting_title(self, title: str | None) -> str:
        """``"title: ..."``, cut so that it takes at most a quarter of a chunk (it is embedded with every chunk)."""
        if not title:
            return ""
        text = f"title: {title}"
        budget = self.splitter.chunk_size // 4
        while text and len(self.splitter._tokenizer(text)) > budget:
            text = text[: len(text) // 2]
        return text

    def text_node(self, prepared: PreparedFile, index: int, total: int, chunk: str, extra: dict) -> TextNode:
        """The node of chunk ``index`` of ``total`` of a file chunked by :meth:`text_chunks`."""
        metadata = self._base_metadata(prepared, index, total) | extra
        if prepared.title:
            metadata["title"] = prepared.title
        if prepared.encoding and prepared.encoding not in ("utf-8", "ascii"):
            metadata["encoding"] = prepared.encoding
        return TextNode(
            id_=point_id(prepared.found.rel, prepared.content_key, index),
            text=chunk,
            metadata=metadata,
            excluded_embed_metadata_keys=[k for k in metadata if k != "title"],
            excluded_llm_metadata_keys=[k for k in metadata if k in BOOKKEEPING_KEYS],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(prepared.found.rel))},
        )

    def text_nodes(self, prepared: PreparedFile) -> list[TextNode]:
        """All nodes of a text file at once (small files; the indexer streams them from :meth:`text_chunks`)."""
        spool = self.text_chunks(prepared)
        try:
            return [self.text_node(prepared, i, spool.count, chunk, extra) for i, (chunk, extra) in enumerate(spool)]
        finally:
            spool.close()

    def image_node(self, prepared: PreparedFile, max_side: int | None = None,
                   to_input: Callable[[Any], Any] | None = None) -> tuple[ImageNode, Any]:
        """The node of one image, and ``to_input(pixels)`` (e.g. a model's pixel tensor) or None.

        The image is decoded once, with its longer side cut to ``max_side`` (at least what OCR reads), and its
        pixels are dropped before returning: only the node and the (small) model input are kept.
        """
        found = prepared.found
        side = max(max_side or 0, getattr(self.ocr, "max_side", 0) if self.ocr else 0) or VALIDATION_SIDE
        with snapshot(found, prepared.sha256) as copy:
            loaded = load_image(copy, max_pixels=self.max_image_pixels, max_side=side)
        ocr_text = self.ocr(loaded.image) if self.ocr else ""
        model_input = to_input(loaded.image) if to_input else None
        loaded.image = None  # the decoded pixels are not needed any more
        surrogate = build_surrogate(found.rel, prepared.caption, prepared.references_text, loaded.exif_description, ocr_text)
        if not surrogate.sources:
            surrogate.sources["file_name"] = found.path.name
        mimetype = mimetypes.guess_type(found.path.name)[0] or "image/" + (loaded.format or "png").lower()
        metadata = self._base_metadata(prepared, 0, 1) | {
            "width": loaded.width,
            "height": loaded.height,
            "image_mimetype": mimetype,
            "surrogate_sources": ",".join(surrogate.sources),
        }
        if loaded.exif_orientation not in (None, 1):
            metadata["exif_orientation"] = loaded.exif_orientation
        node = ImageNode(
            id_=point_id(found.rel, prepared.content_key, 0),
            text=surrogate.text,
            image_path=str(found.path),
            image_mimetype=mimetype,
            metadata=metadata,
            excluded_embed_metadata_keys=list(metadata),
            excluded_llm_metadata_keys=[k for k in metadata if k in BOOKKEEPING_KEYS or k == "exif_orientation"],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document_id(found.rel))},
        )
        return node, model_input
