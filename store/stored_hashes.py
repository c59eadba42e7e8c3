"""What the vector store already holds: (document id, model version, content hash) rows.

SkipUnchanged joins these rows with a run's documents inside the pipeline. They are read
here in pages and never gathered into one mapping, so the memory of a reader stays flat
however large the store grows: LanceDB streams the two small columns of a version's table
as Arrow record batches; Weaviate pages through the collection with its cursor.

No Beam import: the pipeline's reader (``beam_pipeline.skip_unchanged``) and any tool share
these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["StoredHash", "lancedb_hash_pages", "weaviate_hash_pages"]

PAGE_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class StoredHash:
    """One stored (document, model version) and the hash of the text it was embedded from."""

    doc_id: str
    model_version: str
    content_hash: str


def lancedb_hash_pages(uri: str, table_name: str, version: str,
                       page_rows: int = PAGE_ROWS) -> Iterator[list[StoredHash]]:
    """Pages of ``version``'s rows from LanceDB table ``table_name`` (none if it is absent).

    Only the ``id`` and ``content_hash`` columns are read, as a stream of record batches.
    """
    import lancedb

    db = lancedb.connect(uri)
    try:
        table = db.open_table(table_name)
    except ValueError:  # "Table ... was not found": nothing stored for this version yet
        return
    reader = table.search().select(["id", "content_hash"]).to_batches(page_rows)
    for batch in reader:
        ids = batch.column("id").to_pylist()
        hashes = batch.column("content_hash").to_pylist()
        yield [StoredHash(i, version, h or "") for i, h in zip(ids, hashes, strict=True)]


def weaviate_hash_pages(collection: Any, versions: Iterable[str],
                        page_rows: int = 1_000) -> Iterator[list[StoredHash]]:
    """Pages of the rows of ``versions`` in a weaviate-client collection handle.

    Weaviate's cursor (``after``) cannot be combined with a filter, and offset paging stops
    at QUERY_MAXIMUM_RESULTS, so this reads every object's three small properties once and
    keeps the versions asked for.
    """
    wanted = set(versions)
    page: list[StoredHash] = []
    for obj in collection.iterator(return_properties=["doc_id", "model_version", "content_hash"],
                                   cache_size=page_rows):
        props = obj.properties
        version = str(props.get("model_version"))
        if version in wanted:
            page.append(StoredHash(str(props["doc_id"]), version, str(props.get("content_hash") or "")))
            if len(page) >= page_rows:
                yield page
                page = []
    if page:
        yield page
