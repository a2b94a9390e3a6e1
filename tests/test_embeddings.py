"""simplevector.embeddings: the protocol, Callable, the offline GloVe model, the
sentence-transformers adapter (where installed) and the OpenAI-compatible HTTP adapter
against a real stub server on 127.0.0.1 that answers 429 first."""

import http.server
import json
import threading

import numpy as np
import pytest

import simplevector as sv
from simplevector import embeddings


def test_callable_is_an_embedding_function_and_checks_its_arguments():
    fn = embeddings.Callable(lambda texts: np.ones((len(texts), 3)), model="ones@1.0.0", dim=3)
    assert isinstance(fn, sv.EmbeddingFunction)
    out = fn.embed(["a", "b"])
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert fn.count_tokens(["hello world", "a"]) == 3
    with pytest.raises(sv.InvalidInput, match="name@MAJOR"):
        embeddings.Callable(lambda t: t, model="no-version", dim=3)
    with pytest.raises(sv.InvalidInput, match="dim"):
        embeddings.Callable(lambda t: t, model="x@1.0.0", dim=0)
    with pytest.raises(sv.InvalidInput, match="not callable"):
        embeddings.Callable("nope", model="x@1.0.0", dim=3)


def test_embed_checked_rejects_a_wrong_shape_and_nan_naming_the_model():
    from simplevector.ops.embeddings import embed_checked
    bad = embeddings.Callable(lambda t: np.ones((len(t), 2)), model="bad@1.0.0", dim=3)
    with pytest.raises(sv.EmbeddingError, match=r"bad@1.0.0.*\(1, 2\).*\(1, 3\)"):
        embed_checked(bad, ["x"])
    nan = embeddings.Callable(lambda t: np.full((len(t), 3), np.nan), model="nan@1.0.0", dim=3)
    with pytest.raises(sv.EmbeddingError, match="NaN"):
        embed_checked(nan, ["x"])


def test_glove_mean_puts_related_texts_nearer_than_unrelated_ones():
    fn = embeddings.GloVeMean()
    assert isinstance(fn, sv.EmbeddingFunction) and fn.dim == 50
    X = fn.embed(["the king and the queen", "a prince and a princess",
                  "stock market prices fell", "zzqxv qqqzzv"])
    assert X.shape == (4, 50) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    sim = X @ X.T
    assert sim[0, 1] > sim[0, 2] + 0.1
    again = fn.embed(["zzqxv qqqzzv"])      # out of vocabulary: deterministic, not zero
    assert np.allclose(again[0], X[3])
    assert fn.count_tokens(["The king's crown, gold."]) == len(
        embeddings.tokenize("The king's crown, gold.")) == 7


def test_sentence_transformer_adapter_loads_a_local_model(tmp_path):
    """Runs only where the optional `embed` extra (sentence-transformers) is installed: a
    tiny randomly initialised BERT is built and saved locally, then loaded by path."""
    pytest.importorskip("sentence_transformers")
    import transformers
    from sentence_transformers import SentenceTransformer
    try:                                    # sentence-transformers 5 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "king", "queen", "market"]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    transformers.BertTokenizer(str(tmp_path / "bert" / "vocab.txt")).save_pretrained(
        tmp_path / "bert")
    word = models.Transformer(str(tmp_path / "bert"))
    SentenceTransformer(modules=[word, models.Pooling(16)]).save(str(tmp_path / "st"))
    fn = embeddings.SentenceTransformer(tmp_path / "st", model="tiny-bert@1.0.0")
    assert isinstance(fn, sv.EmbeddingFunction) and fn.dim == 16
    X = fn.embed(["king queen", "market"])
    assert X.shape == (2, 16) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert fn.count_tokens(["king queen"]) == 2
    with pytest.raises(sv.InvalidInput, match="not a directory"):
        embeddings.SentenceTransformer(tmp_path / "missing", model="st@1.0.0")


class _Stub(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible /embeddings endpoint: the first ``fail`` requests get 429 with
    Retry-After, then each text t gets [len(t), 1, 0, 0]."""

    state = {"fail": 0, "requests": [], "retry_after": "0.01"}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.state["requests"].append(body)
        if self.state["fail"] > 0:
            self.state["fail"] -= 1
            self.send_response(429)
            self.send_header("Retry-After", self.state["retry_after"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0, 0.0]}
                for i, t in enumerate(body["input"])]
        # answered out of order: the adapter sorts by index
        raw = json.dumps({"data": data[::-1],
                          "usage": {"total_tokens": 7 * len(body["input"])}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def stub():
    _Stub.state = {"fail": 0, "requests": [], "retry_after": "0.01"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Stub.state
    server.shutdown()
    server.server_close()


def test_openai_adapter_batches_and_retries_after_429_with_retry_after(stub):
    url, state = stub
    state["fail"] = 2
    slept = []
    fn = embeddings.OpenAICompatible(url, "stub-embed", model="stub@1.0.0", dim=4,
                                     batch_size=3, sleep=slept.append)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    X = fn.embed(texts)
    assert X[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert [len(r["input"]) for r in state["requests"]] == [3, 3, 3, 2]   # 2 refused, 2 ok
    assert all(r["model"] == "stub-embed" for r in state["requests"])
    assert slept == [0.01, 0.01] and fn.retries == 2
    assert fn.last_usage == 35
    fn.close()


def test_openai_adapter_gives_up_after_max_retries_with_a_typed_error(stub):
    url, state = stub
    state["fail"] = 10
    state["retry_after"] = "1000"
    slept = []
    fn = embeddings.OpenAICompatible(url, "stub-embed", model="stub@1.0.0", dim=4,
                                     max_retries=2, max_backoff=5, sleep=slept.append)
    with pytest.raises(sv.EmbeddingError, match="429 3 times"):
        fn.embed(["x"])
    assert slept == [5, 5]          # Retry-After capped at max_backoff
    fn.close()


def test_retry_after_parses_seconds_and_http_dates():
    from simplevector.ops.embeddings import retry_after_seconds
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 02 Dec 2026 00:00:10 GMT", now=1796169600.0) == 10.0
    assert retry_after_seconds("soon") is None
