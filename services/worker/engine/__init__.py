"""The execution engine: continuous batching, token streaming, resume and cancellation.

``EngineRuntime`` wraps a loaded transformers model; ``GenerationEngine`` is the batching
loop, ``EmbeddingBatcher`` its counterpart for embeddings.
"""

from __future__ import annotations

from .embedding import EmbeddingBatcher
from .generation import EngineStats, GenerationEngine
from .runtime import EngineRuntime

__all__ = ["EmbeddingBatcher", "EngineRuntime", "EngineStats", "GenerationEngine"]
