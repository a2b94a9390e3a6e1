"""The OpenAPI 3.1 document of the server, built from its route table.

Request bodies and query parameters are described field by field (what ``_payload``
accepts), so that a client generator, and schemathesis in the tests, can build valid
requests; the answers document their success status (200, or 201 for the POSTs that
create something), the error envelope for 4XX/5XX, and the bearer-key scheme.
"""

from __future__ import annotations

__all__ = ["build", "BODIES", "QUERY", "CREATED", "NAME", "CONSUMER"]

_ID = {"type": ["string", "integer"]}
_IDS = {"oneOf": [_ID, {"type": "array", "items": _ID}]}
_VECTOR = {"type": "array", "items": {"type": "number"}}
_VECTORS = {"oneOf": [_VECTOR, {"type": "array", "items": _VECTOR}]}
_INCLUDE = {"type": "array", "items": {"type": "string",
                                       "enum": ["metadata", "documents", "vectors"]}}
_NULLABLE_STR = {"type": ["string", "null"]}
_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_RECORD = {"type": "object", "required": ["id", "text"],
           "properties": {"id": _ID, "text": {"type": "string"},
                          "metadata": {"type": ["object", "null"]},
                          "updated_at": {"type": ["number", "string", "null"]}}}
#: the engine's namespace name rule (engine/validate.py)
NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}
_CONFIG = {"dim": {"type": "integer", "minimum": 1, "maximum": 65536},
           "metric": {"type": "string", "enum": ["cosine", "l2", "ip"]},
           "model": _NULLABLE_STR, "index": {"type": "string"}}

#: operation id -> (properties, required) of the JSON request body
BODIES = {
    "create_namespace": ({"name": NAME, **_CONFIG}, ["name", "dim"]),
    "create_version": (_CONFIG, []),
    "promote": ({"version": {"type": "integer", "minimum": 1}}, ["version"]),
    "upsert": ({"ids": _IDS, "vectors": _VECTORS,
                "metadata": {"type": ["array", "null"], "items": {"type": ["object", "null"]}},
                "documents": {"type": ["array", "null"], "items": _NULLABLE_STR}},
               ["ids", "vectors"]),
    "get": ({"ids": _IDS, "include": _INCLUDE}, ["ids"]),
    "delete": ({"ids": _IDS, "where": {"type": "object"}}, []),
    "query": ({"vectors": _VECTORS, "k": {"type": "integer", "minimum": 1},
               "where": {"type": "object"}, "include": _INCLUDE,
               "nprobe": {"type": "integer", "minimum": 1},
               "refine": {"type": "integer", "minimum": 1},
               "exact": {"type": "boolean"}, "explain": {"type": "boolean"}}, ["vectors"]),
    "build_index": ({"spec": _NULLABLE_STR}, []),
    "verify": ({"deep": {"type": "boolean"}}, []),
    "repair": ({"rows_from_wal": {"type": "boolean"}}, []),
    "create_key": ({"role": {"type": "string", "enum": ["reader", "writer", "admin"]},
                    "namespaces": {"type": ["array", "null"], "items": {"type": "string"}},
                    "expires": {"type": ["string", "number", "null"]},
                    "name": _NULLABLE_STR}, ["role"]),
    "create_snapshot": ({"path": _NULLABLE_STR}, []),
    "verify_snapshot": ({"path": {"type": "string"}}, ["path"]),
    "prune_snapshots": ({"keep": {"type": "integer", "minimum": 0}}, ["keep"]),
    "probe": ({"samples": {"type": "integer", "minimum": 1},
               "k": {"type": "integer", "minimum": 1}, "where": {"type": "object"}}, []),
    "compact": ({"namespace": _NULLABLE_STR,
                 "version": {"type": ["integer", "null"], "minimum": 1}}, []),
    "consumer_changes": ({"since": {"type": "integer", "minimum": 0},
                          "limit": {"type": "integer", "minimum": 1}}, []),
    "set_budget": ({"namespace": _NULLABLE_STR, "model": _NULLABLE_STR,
                    "max_tokens": {"type": ["integer", "null"], "minimum": 0},
                    "max_cost": {"type": ["number", "null"], "minimum": 0},
                    "period": {"type": "string", "enum": ["hour", "day", "month", "total"]},
                    "hard": {"type": "boolean"}, "remove": {"type": "boolean"}}, []),
    "set_rate_limit": ({"namespace": NAME,
                        "op": {"type": "string", "enum": ["query", "write", "embed"]},
                        "per_second": {"type": ["number", "null"], "minimum": 0},
                        "burst": {"type": ["number", "null"], "minimum": 1},
                        "wait": {"type": "boolean"}}, ["namespace", "op"]),
    "query_text": ({"text": _TEXTS,
                    "k": {"type": "integer", "minimum": 1}, "where": {"type": "object"},
                    "include": _INCLUDE, "nprobe": {"type": "integer", "minimum": 1},
                    "refine": {"type": "integer", "minimum": 1},
                    "exact": {"type": "boolean"}}, ["text"]),
    "sync": ({"records": {"type": "array", "items": _RECORD},
              "mode": {"type": "string", "enum": ["incremental", "full", "scoped_full"]},
              "source_key": _NULLABLE_STR,
              "batch_size": {"type": "integer", "minimum": 1}}, ["records"]),
    "migration_start": ({"model": {"type": "string"}, "index": _NULLABLE_STR}, ["model"]),
    "migration_run": ({"batch_size": {"type": "integer", "minimum": 1},
                       "max_batches": {"type": ["integer", "null"], "minimum": 1}}, []),
    "migration_shadow": ({"k": {"type": "integer", "minimum": 1},
                          "samples": {"type": "integer", "minimum": 1},
                          "seed": {"type": "integer"}}, []),
    "migration_promote": ({"force": {"type": "boolean"}}, []),
    "migration_abort": ({"drop": {"type": "boolean"}}, []),
    "migration_finish": ({"drop_old": {"type": "boolean"}}, []),
}

#: operation id -> query parameters (besides ?version= on namespace routes)
QUERY = {
    "latency": {"namespace": {"type": "string"}, "op": {"type": "string"},
                "window": {"type": "string"}},
    "changes": {"since": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1}},
    "cost": {"window": {"type": "string"}},
    "freshness": {"namespace": NAME, "max_age": {"type": "number", "minimum": 0}},
    "migrations": {"namespace": NAME},
}

#: the POSTs that answer 201 Created
CREATED = {"create_namespace", "create_version", "create_key", "create_snapshot",
           "migration_start"}
#: the engine's named-consumer rule (engine/retention.py)
CONSUMER = {"type": "string", "minLength": 1, "maxLength": 200}


def build(routes, permissions, version: str, msgpack_type: str) -> dict:
    paths: dict = {}
    error = {"description": "a SimpleVector error",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, method, endpoint, op_id in routes:
        params = []
        if "{name}" in path:
            params.append({"name": "name", "in": "path", "required": True, "schema": NAME})
            params.append({"name": "version", "in": "query", "required": False,
                           "schema": {"type": "integer", "minimum": 1}})
        if "{key_id}" in path:
            params.append({"name": "key_id", "in": "path", "required": True,
                           "schema": {"type": "string"}})
        if "{consumer}" in path:
            params.append({"name": "consumer", "in": "path", "required": True,
                           "schema": CONSUMER})
        for name, schema in QUERY.get(op_id, {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
        ok = "201" if op_id in CREATED else "200"
        op = {"operationId": op_id, "summary": (endpoint.__doc__ or "").strip(),
              "parameters": params,
              "responses": {ok: {"description": "OK"}, "4XX": error, "5XX": error}}
        if permissions[op_id][0] is None:
            op["security"] = []
        if method == "POST":
            props, required = BODIES.get(op_id, ({}, []))
            schema = {"type": "object", "properties": props, "additionalProperties": False}
            if required:
                schema["required"] = required
            op["requestBody"] = {"required": bool(required), "content": {
                "application/json": {"schema": schema}, msgpack_type: {"schema": schema}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "SimpleVector", "version": version},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "an API key from `simplevector keys create`; needed once the "
                               "database has any key"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "hint": {"type": ["string", "null"]}}}}}}},
    }
