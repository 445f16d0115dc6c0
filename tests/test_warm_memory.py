"""What a long-lived process keeps after it builds a vector index (issue 12: a warm app at
most 600 MB at 100k): the pass over every vector leaves none of the catalog's mapped pages
resident, and reads through the map stay correct after it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from store import Catalog, FileRecord, index_cache
from tests.helpers import mapped_kb

DIM = 512
COUNT = 4000  # 8 MB of vectors: far above what a few re-scoring reads map


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_pass_over_every_vector_leaves_no_mapped_page_resident(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((COUNT, DIM)).astype(np.float32)
    path = tmp_path / "catalog.db"
    cat = Catalog(path)
    root = cat.add_root("/p")
    cat.write_batch([FileRecord(f"/p/{i}.jpg", root, 10, 1, f"h{i}", "ok")
                     for i in range(COUNT)], {f"h{i}": v for i, v in enumerate(vectors)}, "m")
    cat.close()
    cat = Catalog(path, readonly=True)
    mapped = cat.conn.execute("PRAGMA mmap_size").fetchone()[0]
    index = index_cache.open_index(cat, "m", tmp_path / "vectors", DIM, use_cache=False)
    assert len(index) == COUNT
    # The whole 8 MB went through the map; none of it may stay (the build's copy is freed).
    assert mapped_kb(path) < 1024, mapped_kb(path)
    assert cat.conn.execute("PRAGMA mmap_size").fetchone()[0] == mapped
    # Reads after it (a query's re-scoring) still see the right vectors.
    ids = [int(i) for (i,) in cat.conn.execute("SELECT id FROM files ORDER BY id LIMIT 3")]
    got = cat.vectors_for_files("m", ids)
    assert len(got) == 3
    for file_id, vector in got.items():
        np.testing.assert_array_equal(vector, vectors[file_id - ids[0]])
