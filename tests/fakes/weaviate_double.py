"""A Weaviate protocol double: the REST and gRPC surface weaviate-client v4 uses, in-process.

Weaviate cannot run on these machines (no binary, no Docker), so tests point the REAL
``weaviate-client`` at this double. It speaks the wire protocol, not a Python API:

REST (``http.server``, 127.0.0.1, ephemeral port)
    ``GET /v1/meta`` (version, default 1.32.0, and ``grpcMaxMessageSize``),
    ``GET /v1/.well-known/ready|live`` (200), ``GET /v1/.well-known/openid-configuration``
    (404: no OIDC), ``GET|POST /v1/schema``, ``GET|PUT|DELETE /v1/schema/{Class}``, and
    ``GET /pypi/weaviate-client/json`` so tests can aim the client's PyPI version check
    here (``weaviate.connect.v4.PYPI_PACKAGE_URL``; see :func:`patch_pypi_check`).
gRPC (``grpcio``, the ``weaviate.v1.Weaviate`` service from the protos shipped inside
weaviate-client, ``weaviate.proto.v1``)
    ``BatchObjects``, ``Search`` (fetch with ``after`` cursor / offset / limit, filters,
    ``near_vector`` on one target vector with cosine / dot / l2-squared distance),
    ``Aggregate`` (``objects_count`` with filters), ``BatchDelete`` (filter required; at
    most ``query_maximum_results`` objects removed per call while ``matches`` counts every
    match, as ``adapters/repos/db/batch.go`` ``BatchDeleteObjects`` does; ``dry_run`` and
    ``verbose``) and ``grpc.health.v1.Health/Check``.
    Everything else answers UNIMPLEMENTED, never UNAVAILABLE (the client retries
    UNAVAILABLE for minutes).

Behaviour kept from Weaviate because clients depend on it: schema defaults filled in the way
the server does (so ``collection.config.get()`` parses); re-import with an existing UUID
REPLACES the object, vectors included, keeping its creation time; an object may carry only
some named vectors and a search on a target vector sees only objects that have it; the
first vector of a named vector fixes its dimension, later mismatches are per-object errors;
ints arrive as doubles and are checked against the schema type; per-object errors are
returned by index and never fail the RPC; filters need ``indexFilterable``; the ``after``
cursor cannot be combined with filters or a search; adding named vectors to a collection
(PUT) needs server version >= 1.31; optional API-key auth (REST ``Authorization`` header,
gRPC ``authorization`` metadata).

Deliberate differences: auto-schema is off (unknown properties are per-object errors);
only self-provided vectors (``vectorizer: none``), single vectors, scalar property types
plus ``text[]``; no multi-tenancy, references, nested objects, BM25/hybrid, group-by,
sorting, multi-target search, tenants or replication.

Faults on demand: any text property containing ``reject_marker`` (default ``__REJECT__``)
gets a per-object error; :meth:`WeaviateDouble.fail_next_batch` makes the next
``BatchObjects`` calls fail as a whole with a gRPC status (never UNAVAILABLE).

In-process::

    with WeaviateDouble() as wv, patch_pypi_check(wv.pypi_url):
        client = weaviate.connect_to_custom("127.0.0.1", wv.http_port, False,
                                            "127.0.0.1", wv.grpc_port, False)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import struct
import threading
import time
import uuid as uuid_lib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import grpc
from google.protobuf import json_format
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

__all__ = ["DEFAULT_VERSION", "REJECT_MARKER", "WeaviateDouble", "patch_pypi_check"]

DEFAULT_VERSION = "1.32.0"
REJECT_MARKER = "__REJECT__"
GRPC_MAX_MESSAGE = 104_858_000  # Weaviate's default GRPC_MAX_MESSAGE_SIZE
QUERY_DEFAULT_LIMIT = 10
QUERY_MAXIMUM_RESULTS = 10_000  # Weaviate's default: the most objects one batch delete removes
_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,229}$")
_CLASS_RE = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
_SCALAR_TYPES = {"text", "int", "number", "boolean", "date", "uuid", "text[]"}
_FILTERS = base_pb2.Filters
_SINGLE = base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32

_HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128,
    "ef": -1, "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1_000_000_000_000, "flatSearchCutoff": 40000, "distance": "cosine",
    "filterStrategy": "sweeping",
    "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256,
           "trainingLimit": 100000, "encoder": {"type": "kmeans", "distribution": "log-normal"}},
    "bq": {"enabled": False}, "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "rq": {"enabled": False, "bits": 8, "rescoreLimit": 20},
    "multivector": {"enabled": False, "aggregation": "maxSim",
                    "muvera": {"enabled": False, "ksim": 4, "dprojections": 16, "repetitions": 10}},
}
_CLASS_DEFAULTS: dict[str, Any] = {
    "invertedIndexConfig": {
        "bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60,
        "stopwords": {"preset": "en", "additions": None, "removals": None},
        "indexTimestamps": False, "indexNullState": False, "indexPropertyLength": False,
        "usingBlockMaxWAND": True,
    },
    "multiTenancyConfig": {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False},
    "replicationConfig": {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"},
    "shardingConfig": {"virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1,
                       "desiredVirtualCount": 128, "actualVirtualCount": 128, "key": "_id",
                       "strategy": "hash", "function": "murmur3"},
}


class _Refusal(Exception):
    """A request the double refuses: REST status or gRPC code, with Weaviate-like text."""

    def __init__(self, message: str, *, status: int = 422,
                 code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def _unimplemented(what: str) -> _Refusal:
    return _Refusal(f"the Weaviate double does not implement {what}", status=501,
                    code=grpc.StatusCode.UNIMPLEMENTED)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- schema ------------------------------------------------------------------------------


def _capitalized(name: str) -> str:
    return name[:1].upper() + name[1:]


def _full_property(prop: dict[str, Any]) -> dict[str, Any]:
    name, types = prop.get("name", ""), prop.get("dataType") or []
    if not _NAME_RE.match(name):
        raise _Refusal(f"'{name}' is not a valid property name")
    if len(types) != 1 or types[0] not in _SCALAR_TYPES:
        raise _unimplemented(f"dataType {types} (property {name!r})")
    text = types[0] in ("text", "text[]")
    return {
        "name": name, "dataType": list(types), "description": prop.get("description"),
        "indexFilterable": prop.get("indexFilterable", True),
        "indexSearchable": prop.get("indexSearchable", True) if text else False,
        "indexRangeFilters": prop.get("indexRangeFilters", False),
        "tokenization": prop.get("tokenization") or "word" if text else None,
    }


def _full_vector(name: str, config: dict[str, Any]) -> dict[str, Any]:
    if not _NAME_RE.match(name):
        raise _Refusal(f"'{name}' is not a valid name for a named vector")
    vectorizer = config.get("vectorizer") or {"none": {}}
    if list(vectorizer) != ["none"]:
        raise _unimplemented(f"vectorizer {list(vectorizer)} (only self-provided vectors)")
    index_type = config.get("vectorIndexType") or "hnsw"
    if index_type not in ("hnsw", "flat"):
        raise _unimplemented(f"vectorIndexType {index_type!r}")
    index = {**_HNSW_DEFAULTS, **(config.get("vectorIndexConfig") or {})}
    if index["distance"] not in _DISTANCES:
        raise _unimplemented(f"distance {index['distance']!r}")
    return {"vectorizer": {"none": {}}, "vectorIndexType": index_type, "vectorIndexConfig": index}


def _full_class(body: dict[str, Any]) -> dict[str, Any]:
    name = _capitalized(str(body.get("class", "")))
    if not _CLASS_RE.match(name):
        raise _Refusal(f"'{name}' is not a valid class name")
    if (body.get("multiTenancyConfig") or {}).get("enabled"):
        raise _unimplemented("multi-tenancy")
    full = {**copy.deepcopy(_CLASS_DEFAULTS), "class": name, "description": body.get("description")}
    full["properties"] = [_full_property(p) for p in body.get("properties") or []]
    named = body.get("vectorConfig") or {}
    if named:
        full["vectorConfig"] = {n: _full_vector(n, c) for n, c in named.items()}
    else:  # a legacy single-vector collection
        legacy = _full_vector("default", body)
        full.update(vectorizer="none", vectorIndexType=legacy["vectorIndexType"],
                    vectorIndexConfig=legacy["vectorIndexConfig"])
    return full


# -- objects, filters, distances ---------------------------------------------------------


@dataclass
class _Object:
    uuid: str
    properties: dict[str, Any]
    vectors: dict[str, list[float]]
    created_ms: int
    updated_ms: int


@dataclass
class _Collection:
    schema: dict[str, Any]
    objects: dict[str, _Object] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.schema["class"])

    def prop(self, name: str) -> dict[str, Any]:
        for p in self.schema["properties"]:
            if p["name"] == name:
                return dict(p)
        raise _Refusal(f'no such prop with name "{name}" found in class "{self.name}" in the schema. '
                       "Check your schema files for which properties in this class are available")

    def vector_names(self) -> list[str]:
        return list(self.schema.get("vectorConfig") or {})

    def distance_metric(self, vector: str) -> str:
        if "vectorConfig" in self.schema:
            return str(self.schema["vectorConfig"][vector]["vectorIndexConfig"]["distance"])
        return str(self.schema["vectorIndexConfig"]["distance"])


def _cosine(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 1.0
    return 1.0 - sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


_DISTANCES: dict[str, Callable[[list[float], list[float]], float]] = {
    "cosine": _cosine,
    "dot": lambda a, b: -sum(x * y for x, y in zip(a, b, strict=True)),
    "l2-squared": lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b, strict=True)),
}


def _floats(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def _float_bytes(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def _filter_value(f: base_pb2.Filters) -> Any:
    which = f.WhichOneof("test_value")
    if which is None:
        raise _Refusal("a filter needs a value")
    value = getattr(f, which)
    if which in ("value_text_array", "value_int_array", "value_number_array", "value_boolean_array"):
        return list(value.values)
    if which == "value_geo":
        raise _unimplemented("geo filters")
    return value


def _equal(prop: dict[str, Any], have: Any, want: Any) -> bool:
    if have is None:
        return False
    if isinstance(have, list):
        return any(_equal({**prop, "dataType": ["text"]}, h, want) for h in have)
    if prop["dataType"][0] == "text" and prop.get("tokenization") != "field":
        return set(_tokens(str(want))) <= set(_tokens(str(have)))
    if isinstance(have, bool) or isinstance(want, bool):
        return bool(have) is bool(want) and isinstance(have, bool) and isinstance(want, bool)
    if isinstance(have, int | float) and isinstance(want, int | float):
        return float(have) == float(want)
    return str(have).lower() == str(want).lower() if prop["name"] == "_id" else have == want


_ORDER: dict[int, Callable[[Any, Any], bool]] = {
    _FILTERS.OPERATOR_GREATER_THAN: lambda a, b: a > b,
    _FILTERS.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
    _FILTERS.OPERATOR_LESS_THAN: lambda a, b: a < b,
    _FILTERS.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
}


def _filter_target(col: _Collection, f: base_pb2.Filters) -> dict[str, Any]:
    if f.HasField("target") and f.target.WhichOneof("target") != "property":
        raise _unimplemented("filters on references")
    name = f.target.property if f.HasField("target") else (f.on[0] if len(f.on) == 1 else "")
    if name == "_id":
        return {"name": "_id", "dataType": ["uuid"], "indexFilterable": True}
    if name.startswith("_"):
        raise _unimplemented(f"filters on {name}")
    prop = col.prop(name)
    if not prop["indexFilterable"]:
        raise _Refusal(f"Filtering by property '{name}' requires inverted index. Is `indexFilterable` "
                       f"option of property '{name}' enabled? Set it to `true` or leave it empty")
    return prop


def _matches(col: _Collection, obj: _Object, f: base_pb2.Filters) -> bool:
    op = f.operator
    if op == _FILTERS.OPERATOR_AND:
        return all(_matches(col, obj, g) for g in f.filters)
    if op == _FILTERS.OPERATOR_OR:
        return any(_matches(col, obj, g) for g in f.filters)
    if op == _FILTERS.OPERATOR_NOT:
        return not _matches(col, obj, f.filters[0])
    prop = _filter_target(col, f)
    have = obj.uuid if prop["name"] == "_id" else obj.properties.get(prop["name"])
    want = _filter_value(f)
    if op == _FILTERS.OPERATOR_EQUAL:
        return _equal(prop, have, want)
    if op == _FILTERS.OPERATOR_NOT_EQUAL:
        return not _equal(prop, have, want)
    if op == _FILTERS.OPERATOR_CONTAINS_ANY:
        return any(_equal(prop, have, w) for w in want)
    if op in _ORDER:
        return have is not None and _ORDER[op](have, want)
    raise _unimplemented(f"filter operator {_FILTERS.Operator.Name(op)}")


# -- batch import --------------------------------------------------------------------------


def _coerce(col: _Collection, name: str, value: Any) -> Any:
    prop = col.prop(name)
    kind = prop["dataType"][0]
    bad = _Refusal(f"invalid {kind} property '{name}' on class '{col.name}': got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise bad
        return int(value)  # ints travel as doubles in the Struct
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if kind == "boolean" and not isinstance(value, bool):
        raise bad
    if kind in ("text", "date", "uuid") and not isinstance(value, str):
        raise bad
    if kind == "uuid":
        return str(uuid_lib.UUID(value))
    return value


def _decode_properties(col: _Collection, props: batch_pb2.BatchObject.Properties) -> dict[str, Any]:
    if (props.single_target_ref_props or props.multi_target_ref_props or props.object_properties
            or props.object_array_properties or props.int_array_properties
            or props.number_array_properties or props.boolean_array_properties):
        raise _unimplemented("references, nested objects and non-text arrays")
    raw = json_format.MessageToDict(props.non_ref_properties)
    out = {k: _coerce(col, k, v) for k, v in raw.items() if v is not None}
    for arr in props.text_array_properties:
        if col.prop(arr.prop_name)["dataType"][0] != "text[]":
            raise _Refusal(f"property '{arr.prop_name}' is not text[]")
        out[arr.prop_name] = list(arr.values)
    for name in props.empty_list_props:
        out[name] = []
    return out


def _decode_vectors(col: _Collection, obj: batch_pb2.BatchObject) -> dict[str, list[float]]:
    named = col.vector_names()
    if not named:
        data = _floats(obj.vector_bytes) if obj.vector_bytes else list(obj.vector)
        return {"default": data} if data else {}
    if obj.vector_bytes or obj.vector:
        raise _Refusal(f"collection {col.name} has named vectors {named}; an unnamed vector was sent")
    out: dict[str, list[float]] = {}
    for vec in obj.vectors:
        if vec.name not in named:
            raise _Refusal(f'collection {col.name} has no named vector "{vec.name}" (has {named})')
        if vec.type not in (_SINGLE, base_pb2.Vectors.VECTOR_TYPE_UNSPECIFIED):
            raise _unimplemented("multi-vectors")
        out[vec.name] = _floats(vec.vector_bytes)
    return out


def _check_dims(col: _Collection, vectors: dict[str, list[float]]) -> None:
    for name, vec in vectors.items():
        if not vec:
            raise _Refusal(f'vector "{name}" is empty')
        have = col.dims.get(name)
        if have is not None and have != len(vec):
            raise _Refusal(f"new node has a vector with length {len(vec)}. "
                           f"Existing nodes have vectors with length {have}")


# -- search replies ----------------------------------------------------------------------


def _value(kind: str, value: Any) -> properties_pb2.Value:
    if kind == "int":
        return properties_pb2.Value(int_value=int(value))
    if kind == "number":
        return properties_pb2.Value(number_value=float(value))
    if kind == "boolean":
        return properties_pb2.Value(bool_value=bool(value))
    if kind == "date":
        return properties_pb2.Value(date_value=str(value))
    if kind == "uuid":
        return properties_pb2.Value(uuid_value=str(value))
    if kind == "text[]":
        texts = properties_pb2.TextValues(values=list(value))
        return properties_pb2.Value(list_value=properties_pb2.ListValue(text_values=texts))
    return properties_pb2.Value(text_value=str(value))


def _properties_result(col: _Collection, obj: _Object,
                       request: search_get_pb2.SearchRequest) -> search_get_pb2.PropertiesResult:
    req = request.properties if request.HasField("properties") else None
    if req is not None and (req.ref_properties or req.object_properties):
        raise _unimplemented("references and nested properties in results")
    if req is None or req.return_all_nonref_properties:
        names = [p["name"] for p in col.schema["properties"]]
    else:
        names = list(req.non_ref_properties)
    fields = {n: _value(col.prop(n)["dataType"][0], obj.properties[n]) for n in names if n in obj.properties}
    return search_get_pb2.PropertiesResult(
        non_ref_props=properties_pb2.Properties(fields=fields), target_collection=col.name
    )


def _metadata_result(obj: _Object, request: search_get_pb2.SearchRequest,
                     distance: float | None) -> search_get_pb2.MetadataResult:
    md = search_get_pb2.MetadataResult(id=obj.uuid, id_as_bytes=uuid_lib.UUID(obj.uuid).bytes)
    if not request.HasField("metadata"):
        return md
    m = request.metadata
    if m.creation_time_unix:
        md.creation_time_unix, md.creation_time_unix_present = obj.created_ms, True
    if m.last_update_time_unix:
        md.last_update_time_unix, md.last_update_time_unix_present = obj.updated_ms, True
    if m.distance and distance is not None:
        md.distance, md.distance_present = distance, True
    if m.certainty and distance is not None:
        md.certainty, md.certainty_present = 1.0 - distance / 2.0, True
    if m.is_consistent:
        md.is_consistent, md.is_consistent_present = True, True
    if m.vector or m.vectors:
        for name in (list(m.vectors) or list(obj.vectors)):
            if name in obj.vectors:
                md.vectors.append(base_pb2.Vectors(name=name, type=_SINGLE,
                                                   vector_bytes=_float_bytes(obj.vectors[name])))
    return md


_UNSUPPORTED_SEARCH = ("group_by", "hybrid_search", "bm25_search", "near_object", "near_text",
                       "near_image", "near_audio", "near_video", "near_depth", "near_thermal",
                       "near_imu", "generative", "rerank", "boost")


def _query_vector(col: _Collection, nv: Any) -> tuple[str, list[float]]:
    targets = list(nv.targets.target_vectors) or list(nv.target_vectors)
    names = col.vector_names() or ["default"]
    if len(targets) > 1:
        raise _unimplemented("multi-target vector search")
    if not targets and len(names) > 1:
        raise _Refusal(f"multiple vectors configured in class {col.name}: {names}; specify a target vector")
    name = targets[0] if targets else names[0]
    if name not in names:
        raise _Refusal(f'target vector "{name}" not found in class {col.name} (has {names})')
    if nv.vectors:
        vec = _floats(nv.vectors[0].vector_bytes)
    elif nv.vector_bytes:
        vec = _floats(nv.vector_bytes)
    elif nv.vector:
        vec = list(nv.vector)
    else:
        mine = [v for v in nv.vector_for_targets if v.name == name]
        if not mine:
            raise _Refusal("near_vector carries no vector")
        vec = _floats(mine[0].vectors[0].vector_bytes if mine[0].vectors else mine[0].vector_bytes)
    if name in col.dims and col.dims[name] != len(vec):
        raise _Refusal(f"vector search: vector lengths don't match: {len(vec)} vs {col.dims[name]}")
    return name, vec


def _near(col: _Collection, objs: list[_Object], nv: Any) -> list[tuple[_Object, float | None]]:
    name, query = _query_vector(col, nv)
    metric = _DISTANCES[col.distance_metric(name)]
    scored = sorted(((o, metric(o.vectors[name], query)) for o in objs if name in o.vectors),
                    key=lambda pair: (pair[1], pair[0].uuid))
    if nv.HasField("distance"):
        scored = [(o, d) for o, d in scored if d <= nv.distance]
    if nv.HasField("certainty"):
        scored = [(o, d) for o, d in scored if 1.0 - d / 2.0 >= nv.certainty]
    return list(scored)


class WeaviateDouble:
    """In-process Weaviate stand-in; see the module docstring for what it implements."""

    def __init__(self, *, version: str = DEFAULT_VERSION, api_key: str | None = None,
                 reject_marker: str = REJECT_MARKER,
                 query_maximum_results: int = QUERY_MAXIMUM_RESULTS) -> None:
        self.version = version
        self.query_maximum_results = query_maximum_results
        self.api_key = api_key
        self.reject_marker = reject_marker
        self.calls: Counter[str] = Counter()
        self._collections: dict[str, _Collection] = {}
        self._batch_faults: list[grpc.StatusCode] = []
        self._lock = threading.RLock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = 0
        self.grpc_port = 0

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                         name="weaviate-double-rest", daemon=True).start()
        opts = [("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE)]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self._grpc)
        self._grpc.add_generic_rpc_handlers((_health_handler(),))
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pypi_url(self) -> str:
        return f"{self.url}/pypi/weaviate-client/json"

    # -- test hooks --------------------------------------------------------------------

    def fail_next_batch(self, code: grpc.StatusCode = grpc.StatusCode.INTERNAL, times: int = 1) -> None:
        """Make the next ``times`` BatchObjects calls fail as a whole with ``code``."""
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ValueError("never inject UNAVAILABLE: weaviate-client retries it for minutes")
        with self._lock:
            self._batch_faults.extend([code] * times)

    def objects(self, collection: str) -> list[dict[str, Any]]:
        """Snapshot of a collection's objects: uuid, properties, vectors, times."""
        with self._lock:
            col = self._collections[_capitalized(collection)]
            return [copy.deepcopy(o.__dict__) for o in sorted(col.objects.values(), key=lambda o: o.uuid)]

    def schema(self, collection: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._collections[_capitalized(collection)].schema)

    # -- REST --------------------------------------------------------------------------

    def rest(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        self.calls[f"{method} {re.sub(r'/schema/[^/]+', '/schema/{class}', path)}"] += 1
        if path == "/pypi/weaviate-client/json":
            import weaviate

            return 200, {"info": {"version": weaviate.__version__}}
        if path.startswith("/v1/.well-known/"):
            return (200, None) if path.endswith(("/ready", "/live")) else (404, None)
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"code": 401, "message": "anonymous access not enabled"}
        try:
            return self._route(method, path, body)
        except _Refusal as exc:
            return exc.status, {"error": [{"message": exc.message}]}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/v1/meta" and method == "GET":
            return 200, {"hostname": "http://[::]:8080", "version": self.version, "modules": {},
                         "grpcMaxMessageSize": GRPC_MAX_MESSAGE}
        if path == "/v1/schema":
            if method == "GET":
                with self._lock:
                    return 200, {"classes": [copy.deepcopy(c.schema) for c in self._collections.values()]}
            if method == "POST":
                return 200, self._create(body)
        match = re.fullmatch(r"/v1/schema/([^/]+)", path)
        if match:
            return self._class_route(method, _capitalized(match.group(1)), body)
        raise _Refusal(f"{method} {path} is not implemented by the Weaviate double", status=404)

    def _class_route(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            col = self._collections.get(name)
            if method == "DELETE":
                self._collections.pop(name, None)
                return 200, None
            if col is None:
                return 404, None
            if method == "GET":
                return 200, copy.deepcopy(col.schema)
            if method == "PUT":
                return 200, self._update(col, body)
        raise _Refusal(f"{method} /v1/schema/{name} is not implemented by the Weaviate double", status=405)

    def _create(self, body: Any) -> dict[str, Any]:
        full = _full_class(body if isinstance(body, dict) else {})
        with self._lock:
            if full["class"] in self._collections:
                raise _Refusal(f'class name "{full["class"]}" already exists')
            self._collections[full["class"]] = _Collection(full)
        return copy.deepcopy(full)

    def _update(self, col: _Collection, body: Any) -> dict[str, Any]:
        new = _full_class(body if isinstance(body, dict) else {})
        if {p["name"] for p in new["properties"]} != {p["name"] for p in col.schema["properties"]}:
            raise _Refusal("properties cannot be updated through updating the class. Use the add "
                           "property feature (e.g. \"POST /v1/schema/{className}/properties\")")
        have, want = col.vector_names(), list(new.get("vectorConfig") or {})
        if not have and want:
            raise _Refusal("named vectors cannot be added to a collection with a legacy (unnamed) vector")
        if set(have) - set(want):
            raise _Refusal(f"named vectors cannot be removed: {sorted(set(have) - set(want))}")
        added = [n for n in want if n not in have]
        if added and tuple(int(x) for x in self.version.split(".")[:2]) < (1, 31):
            raise _Refusal(f"vectorConfig is immutable in Weaviate {self.version}: cannot add {added} "
                           "(adding named vectors needs 1.31 or later)")
        for n in added:
            col.schema["vectorConfig"][n] = new["vectorConfig"][n]
        return copy.deepcopy(col.schema)

    # -- gRPC --------------------------------------------------------------------------

    def check_auth(self, context: grpc.ServicerContext) -> None:
        if self.api_key is None:
            return
        meta = dict(context.invocation_metadata())
        if meta.get("authorization") != f"Bearer {self.api_key}":
            raise _Refusal("anonymous access not enabled", code=grpc.StatusCode.UNAUTHENTICATED)

    def collection(self, name: str) -> _Collection:
        col = self._collections.get(_capitalized(name))
        if col is None:
            raise _Refusal(f'class "{name}" not found in schema', code=grpc.StatusCode.NOT_FOUND)
        return col

    def batch(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        start = time.time()
        with self._lock:
            if self._batch_faults:
                code = self._batch_faults.pop(0)
                raise _Refusal(f"injected fault: BatchObjects fails with {code.name}", code=code)
            errors = []
            for index, obj in enumerate(request.objects):
                try:
                    self._put(obj)
                except _Refusal as exc:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=exc.message))
        return batch_pb2.BatchObjectsReply(took=time.time() - start, errors=errors)

    def _put(self, obj: batch_pb2.BatchObject) -> None:
        col = self.collection(obj.collection)
        if obj.tenant:
            raise _Refusal(f"class {col.name} does not have multi-tenancy enabled, but request was "
                           f"with tenant {obj.tenant!r}")
        uid = str(uuid_lib.UUID(obj.uuid))
        props = _decode_properties(col, obj.properties) if obj.HasField("properties") else {}
        vectors = _decode_vectors(col, obj)
        _check_dims(col, vectors)
        for name, value in props.items():
            if isinstance(value, str) and self.reject_marker in value:
                raise _Refusal(f"rejected by fault injection: property '{name}' contains "
                               f"{self.reject_marker!r}")
        now = _now_ms()
        old = col.objects.get(uid)
        col.objects[uid] = _Object(uid, props, vectors, old.created_ms if old else now, now)
        for name, vec in vectors.items():
            col.dims.setdefault(name, len(vec))

    def search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        start = time.time()
        for name in _UNSUPPORTED_SEARCH:
            if request.HasField(name):
                raise _unimplemented(f"Search.{name}")
        if request.sort_by or request.autocut or request.tenant:
            raise _unimplemented("Search sort_by / autocut / tenant")
        with self._lock:
            col = self.collection(request.collection)
            found = self._select(col, request)
            results = [search_get_pb2.SearchResult(properties=_properties_result(col, o, request),
                                                   metadata=_metadata_result(o, request, d))
                       for o, d in found]
        return search_get_pb2.SearchReply(took=time.time() - start, results=results)

    def _select(self, col: _Collection, request: search_get_pb2.SearchRequest
                ) -> list[tuple[_Object, float | None]]:
        objs = sorted(col.objects.values(), key=lambda o: o.uuid)
        if request.after:
            if request.HasField("filters") or request.HasField("near_vector") or request.offset:
                raise _Refusal("explorer: list class: search: invalid 'after' parameter: other params "
                               "cannot be set along with after", code=grpc.StatusCode.UNKNOWN)
            after = str(uuid_lib.UUID(request.after))
            objs = [o for o in objs if o.uuid > after]
        if request.HasField("filters"):
            objs = [o for o in objs if _matches(col, o, request.filters)]
        pairs: list[tuple[_Object, float | None]] = (
            _near(col, objs, request.near_vector) if request.HasField("near_vector")
            else [(o, None) for o in objs]
        )
        limit = request.limit or QUERY_DEFAULT_LIMIT
        return pairs[request.offset:request.offset + limit]

    def aggregate(self, request: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        if request.aggregations or request.HasField("group_by") or request.WhichOneof("search"):
            raise _unimplemented("Aggregate beyond objects_count with filters")
        start = time.time()
        with self._lock:
            col = self.collection(request.collection)
            objs = [o for o in col.objects.values()
                    if not request.HasField("filters") or _matches(col, o, request.filters)]
        single = aggregate_pb2.AggregateReply.Single(
            objects_count=len(objs) if request.objects_count else None
        )
        return aggregate_pb2.AggregateReply(took=time.time() - start, single_result=single)

    def batch_delete(self, request: batch_delete_pb2.BatchDeleteRequest) -> batch_delete_pb2.BatchDeleteReply:
        """Weaviate's BatchDelete: every object matching the (required) filter counts in
        ``matches``; at most ``query_maximum_results`` of them are removed (or, with
        ``dry_run``, reported as removable) per call; the caller repeats until none match."""
        start = time.time()
        if request.tenant:
            raise _unimplemented("BatchDelete with a tenant")
        with self._lock:
            col = self.collection(request.collection)
            if not request.HasField("filters"):
                raise _Refusal("no filters in batch delete request", code=grpc.StatusCode.UNKNOWN)
            matched = [o for o in sorted(col.objects.values(), key=lambda o: o.uuid)
                       if _matches(col, o, request.filters)]
            chosen = matched[: self.query_maximum_results]
            if not request.dry_run:
                for obj in chosen:
                    del col.objects[obj.uuid]
        objects = [batch_delete_pb2.BatchDeleteObject(uuid=_uuid_int_bytes(o.uuid), successful=True, error="")
                   for o in chosen] if request.verbose else []
        return batch_delete_pb2.BatchDeleteReply(took=time.time() - start, failed=0, matches=len(matched),
                                                 successful=len(chosen), objects=objects)


def _uuid_int_bytes(uid: str) -> bytes:
    """A UUID as the server sends it in a BatchDelete reply: the big-endian bytes of the
    128-bit integer with leading zero bytes dropped (Go's ``big.Int.Bytes()``)."""
    value = uuid_lib.UUID(uid).int
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):  # type: ignore[misc]
    """``weaviate.v1.Weaviate``; methods not defined here answer UNIMPLEMENTED."""

    def __init__(self, double: WeaviateDouble) -> None:
        self._double = double

    def _run(self, method: str, context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
        self._double.calls[f"grpc {method}"] += 1
        try:
            self._double.check_auth(context)
            return call()
        except _Refusal as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug in the double must not look like UNAVAILABLE
            context.abort(grpc.StatusCode.INTERNAL, f"Weaviate double failed: {type(exc).__name__}: {exc}")

    def BatchObjects(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run("BatchObjects", context, lambda: self._double.batch(request))

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run("Search", context, lambda: self._double.search(request))

    def Aggregate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run("Aggregate", context, lambda: self._double.aggregate(request))

    def BatchDelete(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run("BatchDelete", context, lambda: self._double.batch_delete(request))


def _health_handler() -> grpc.GenericRpcHandler:
    """``grpc.health.v1.Health/Check`` with the client's own wire-compatible messages."""
    serving = health_weaviate_pb2.WeaviateHealthCheckResponse(
        status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
    )
    check = grpc.unary_unary_rpc_method_handler(
        lambda request, context: serving,
        request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
        response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check})


def _make_handler(double: WeaviateDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, reply = double.rest(method, self.path.split("?")[0], body, headers)
            data = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._serve("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
            pass

    return Handler


@contextlib.contextmanager
def patch_pypi_check(url: str) -> Iterator[None]:
    """Aim weaviate-client's PyPI version check (run on every connect) at ``url``.

    Without it each ``connect()`` tries pypi.org, which these machines cannot reach.
    """
    import weaviate.connect.v4 as v4

    saved = v4.PYPI_PACKAGE_URL
    v4.PYPI_PACKAGE_URL = url
    try:
        yield
    finally:
        v4.PYPI_PACKAGE_URL = saved
