"""Length buckets: every item leaves exactly once, full batches share one bucket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiering.buckets import LengthBuckets, bucket_width


@given(lengths=st.lists(st.integers(1, 256), max_size=300), batch_size=st.integers(1, 17),
       width=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_every_item_leaves_once_and_full_batches_stay_in_one_bucket(
    lengths: list[int], batch_size: int, width: int
) -> None:
    buckets: LengthBuckets[int] = LengthBuckets(batch_size, width)
    seen: list[int] = []
    for item, n in enumerate(lengths):
        full = buckets.add(item, n)
        if full is not None:
            assert len(full) == batch_size
            assert len({(lengths[i] - 1) // width for i in full}) == 1
            seen += full
        assert len(buckets) < batch_size * (256 // width + 1)  # bounded, whatever was added
    rest = list(buckets.drain())
    assert all(0 < len(b) <= batch_size for b in rest)
    drained = [i for b in rest for i in b]
    assert [lengths[i] for i in drained] == sorted(lengths[i] for i in drained)  # shortest first
    assert sorted(seen + drained) == list(range(len(lengths)))
    assert len(buckets) == 0 and list(buckets.drain()) == []


def test_width_splits_the_range_into_at_most_the_asked_buckets() -> None:
    assert bucket_width(256) == 16 and bucket_width(8192) == 512 and bucket_width(100) == 16
    with pytest.raises(ValueError):
        bucket_width(0)
    with pytest.raises(ValueError):
        LengthBuckets(0, 16)
