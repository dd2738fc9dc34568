"""Index folders of documents (text, Markdown, HTML, PDF, images) into a multimodal Qdrant index."""

from .discovery import FileFailure
from .edge import EdgeVectorStore
from .embeddings import ClipEmbedding, EmbeddingModelUnavailable, SurrogateTextImageEmbedding, resolve_image_embedding, resolve_text_embedding
from ..media import ImageRejected, load_image
from .pipeline import FolderIndexer, IndexReport, build_index, default_store, load_index
from .readers import FileRejected
from .store import IndexStore, StoreError
from .stores import close_local_clients, close_stores, open_store
from .surrogates import ImageSurrogate, build_surrogate

__all__ = [
    "ClipEmbedding", "EdgeVectorStore", "EmbeddingModelUnavailable", "FileFailure", "FileRejected", "FolderIndexer", "ImageRejected",
    "ImageSurrogate", "IndexReport", "IndexStore", "StoreError", "SurrogateTextImageEmbedding", "build_index",
    "build_surrogate", "close_local_clients", "close_stores", "default_store", "load_image", "load_index", "open_store",
    "resolve_image_embedding", "resolve_text_embedding",
]
