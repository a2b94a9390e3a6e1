"""Schemathesis over the server's OpenAPI document: no 5xx, no answer that breaks the
document (status code, content type, response schema), for every route.

Bounded: EXAMPLES generated requests per route (derandomized, so a run is repeatable), each
route against its own fresh database holding the namespace ``fz``; half of the requests
have their ``{name}`` replaced by ``fz`` so that the fuzzer reaches past the 404.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

import simplevector as sv
from simplevector.server import ROUTES, create_app

warnings.filterwarnings("ignore", category=DeprecationWarning)

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
OPERATIONS = [f"{method} {path}" for path, method, _, _ in ROUTES if path != "/openapi.json"]


#: the server's embedding function: namespace ``fz`` is bound to its model, so the fuzzer
#: reaches into query_text, sync and the migration routes
FN = sv.embeddings.Callable(
    lambda texts: np.array([[len(t) + 1.0, t.count("a") + 1.0, 1.0] for t in texts],
                           dtype=np.float32), model="fz@1.0.0", dim=3)


def _fill(db):
    if "fz" not in [i.name for i in db.list_namespaces()]:
        ns = db.create_namespace("fz", dim=3, metric="l2", model=FN.model)
        ns.upsert([1, "a"], np.eye(3, dtype=np.float32)[:2], metadata=[{"k": 1}, None],
                  documents=["one", None])


@pytest.mark.parametrize("operation", OPERATIONS)
def test_openapi_fuzz(tmp_path, operation):
    db = sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False)
    try:
        _fill(db)
        schema = schemathesis.openapi.from_asgi(
            "/openapi.json", create_app(db, max_body_bytes=1 << 20, embeddings=[FN]))
        [op] = [r.ok() for r in schema.get_all_operations()
                if f"{r.ok().method.upper()} {r.ok().path}" == operation]

        @given(case=op.as_strategy(), known=st.booleans())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case, known):
            _fill(db)
            if known and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = "fz"
            case.call_and_validate(checks=CHECKS)
        run()
    finally:
        db.close()


# -- regressions: one per finding -------------------------------------------------------------
def test_query_with_ragged_vectors_is_400_not_500(tmp_path):
    """Finding 1: ``{"vectors": [[], [1.0, ...]]}`` reached numpy's shape read in the
    engine's query before validation (ValueError) and answered 500 internal."""
    from starlette.testclient import TestClient
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db)
        with TestClient(create_app(db), raise_server_exceptions=False) as http:
            for vectors in ([[], [1.0, 2.0, 3.0]], [[1.0], 2.0], [[1.0, [2.0]], [3.0]]):
                r = http.post("/v1/namespaces/fz/query", json={"vectors": vectors})
                assert r.status_code == 400, (vectors, r.text)
                assert r.json()["error"]["code"] == "invalid_input"


AUTH_OPERATIONS = ["POST /v1/namespaces/{name}/upsert", "POST /v1/namespaces/{name}/query",
                   "POST /v1/keys", "DELETE /v1/keys/{key_id}", "GET /v1/namespaces",
                   "POST /v1/snapshots", "POST /v1/budgets"]


@pytest.mark.parametrize("operation", AUTH_OPERATIONS)
def test_openapi_fuzz_with_keys_on(tmp_path, operation):
    """The same checks once the database holds keys, half the requests with an admin key
    and half with a fuzzed Authorization header: 401 and 403 are documented, 5xx never."""
    db = sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False)
    try:
        _fill(db)
        admin, _ = db.keys.create("admin")
        schema = schemathesis.openapi.from_asgi("/openapi.json",
                                                create_app(db, max_body_bytes=1 << 20))
        [op] = [r.ok() for r in schema.get_all_operations()
                if f"{r.ok().method.upper()} {r.ok().path}" == operation]

        @given(case=op.as_strategy(), known=st.booleans(), keyed=st.booleans(),
               junk=st.text(max_size=80))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case, known, keyed, junk):
            _fill(db)
            if known and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = "fz"
            value = f"Bearer {admin}" if keyed else f"Bearer {junk}"
            if not value.isascii() or not value.isprintable():
                value = "Bearer svk_junk"
            case.call_and_validate(checks=CHECKS, headers={"Authorization": value})
        run()
    finally:
        db.close()
