from __future__ import annotations

from collections import Counter

from tiering.ab import assign_version


def test_assignment_is_stable_and_follows_weights() -> None:
    versions = (("a", 0.8), ("b", 0.2))
    picks = [assign_version(f"doc-{i}", versions, "s") for i in range(5000)]
    assert picks == [assign_version(f"doc-{i}", versions, "s") for i in range(5000)]
    share_b = Counter(picks)["b"] / len(picks)
    assert 0.17 < share_b < 0.23


def test_raising_one_weight_only_moves_documents_towards_it() -> None:
    before = {i: assign_version(str(i), (("a", 0.9), ("b", 0.1)), "s") for i in range(3000)}
    after = {i: assign_version(str(i), (("a", 0.5), ("b", 0.5)), "s") for i in range(3000)}
    moved = [i for i in before if before[i] != after[i]]
    assert moved and all(before[i] == "a" and after[i] == "b" for i in moved)


def test_zero_weight_version_gets_nothing() -> None:
    assert {assign_version(str(i), (("a", 1.0), ("b", 0.0)), "s") for i in range(500)} == {"a"}
