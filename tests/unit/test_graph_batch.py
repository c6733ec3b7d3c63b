"""graph.py batches: the incremental check, the depth repair, rollback, the level arrays.

``_validate_batch`` must refuse exactly what ``validate()`` refuses (the property test in
tests/property/test_mutation_machine.py checks that on random batches; here, named cases on
a graph large enough for long paths). Depths repaired after a batch, and the per-id columns
behind ``level_arrays``, must equal what a fresh graph computes from scratch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from helpers_network import DagSpec, assert_unchanged, random_params, snapshot

from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec
from streamdag.errors import InvariantError, OrphanError, UnknownGroupError
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.mutation import (
    Connect,
    Disconnect,
    DuplicateDepth,
    DuplicateWidth,
    Mutation,
    Prune,
    _apply_one,
    apply_mutations,
)
from streamdag.params import ParamStore

DIAMOND = DagSpec(3, 2, (4, 5, 6, 2), ((-1,), (0,), (0, -1), (2, 1)))


def fresh(g: NetworkGraph) -> NetworkGraph:
    """The same graph, every cache computed from scratch."""
    return NetworkGraph.from_dict(g.to_dict())


def assert_caches_fresh(g: NetworkGraph) -> None:
    f = fresh(g)
    assert g._widths == f._widths  # the mirror of the groups' widths, too
    assert g.depths() == f.depths()
    assert g.levels() == f.levels()
    a, b = g.level_arrays(), f.level_arrays()
    for name in ("ids", "level_sizes", "width", "n_preds", "preds"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def open_batch(g: NetworkGraph, p: ParamStore, mutations: list[Mutation]) -> None:
    """Begin a batch and apply ``mutations`` in it, unchecked (as apply_mutations does)."""
    g._begin()
    p.begin()
    for m in mutations:
        _apply_one(g, p, m, step=0, rng=None, noise=0.0)


def smoke() -> tuple[NetworkGraph, ParamStore]:
    work = build_workload(resolve_spec("smoke"))  # 64 groups, ~16 levels
    return work.graph, work.params


def test_level_arrays_are_levels_with_widths_and_preds() -> None:
    g = DIAMOND.build()
    a = g.level_arrays()
    assert a.ids.tolist() == [0, 1, 2, 3] and a.level_sizes.tolist() == [1, 2, 1]
    assert a.width.tolist() == [4, 5, 6, 2] and a.n_preds.tolist() == [1, 1, 2, 2]
    assert a.preds.tolist() == [INPUT, 0, 0, INPUT, 2, 1]


def test_depths_after_duplications_are_repaired_and_exact() -> None:
    g, p = smoke()
    g.levels()  # caches the depths the first batch repairs
    for seed in range(6):
        apply_mutations(g, p, mutation_batch(g, seed), step=seed)
        assert_caches_fresh(g)


@pytest.mark.parametrize("make", [
    lambda g: [Prune(g.group_ids()[10])],
    lambda g: [Prune(g.output.preds[0])],
    lambda g: [Disconnect(g.preds(40)[0], 40)],
    lambda g: [Connect(INPUT, 50), DuplicateDepth(3)],
    lambda g: [DuplicateWidth(5), Prune(5), DuplicateDepth(6)],
])
def test_depths_after_other_batches_are_exact(
    make: Callable[[NetworkGraph], list[Mutation]],
) -> None:
    g, p = smoke()
    g.levels()
    apply_mutations(g, p, make(g))
    assert_caches_fresh(g)


@pytest.mark.parametrize("make", [
    lambda g: [DuplicateDepth(7)],
    lambda g: [DuplicateWidth(7), DuplicateDepth(7)],
    lambda g: [Connect(3, 60)],
    lambda g: [Prune(g.output.preds[0])],  # a sink: nothing below it to get shallower
])
def test_monotone_batches_keep_depths_that_can_only_grow(
    make: Callable[[NetworkGraph], list[Mutation]],
) -> None:
    g, p = smoke()
    open_batch(g, p, make(g))
    assert g._batch is not None and g._depths_can_only_grow(g._batch)
    g._rollback()
    p.rollback()


@pytest.mark.parametrize("make", [
    lambda g: [Prune(10)],
    lambda g: [Disconnect(g.preds(40)[0], 40)],
])
def test_batches_that_drop_an_edge_unbypassed_are_not_monotone(
    make: Callable[[NetworkGraph], list[Mutation]],
) -> None:
    g, p = smoke()
    open_batch(g, p, make(g))
    assert g._batch is not None and not g._depths_can_only_grow(g._batch)
    g._rollback()
    p.rollback()


def _corrupt_cycle(g: NetworkGraph) -> None:
    first = g.levels()[0][0]
    last = max(g.group_ids(), key=lambda x: g.depths()[x])  # a long path back to `first`
    g._set_preds(first, [*g.preds(first), last])


CORRUPTIONS: dict[str, Callable[[NetworkGraph], None]] = {
    "cycle through the whole depth": _corrupt_cycle,
    "self loop": lambda g: g._set_preds(5, [*g.preds(5), 5]),
    "no predecessor": lambda g: g._set_preds(5, []),
    "predecessor twice": lambda g: g._set_preds(5, [*g.preds(5), g.preds(5)[0]]),
    "output misses a sink": lambda g: g._set_preds(OUTPUT, g.output.preds[1:]),
    "output reads a non-sink": lambda g: g._set_preds(OUTPUT, [*g.output.preds, 0]),
    "output reads a sink twice": lambda g: g._set_preds(
        OUTPUT, [*g.output.preds, g.output.preds[0]]),
    "removed sink still read": lambda g: (g._set_preds(g.output.preds[0], []),
                                          g._remove_group(g.output.preds[0])),
    "new group nobody reads": lambda g: g._add_group(3, [INPUT]),
    "past the cap": lambda g: [g._add_group(3, [g.output.preds[0]]) for _ in range(3)],
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_batches_are_refused_by_both_checks_and_rolled_back(name: str) -> None:
    g, p = smoke()
    g.set_max_groups(len(g) + 10)  # the batch adds 8
    g.levels()
    before = snapshot(g, p)
    open_batch(g, p, mutation_batch(g, 0))
    CORRUPTIONS[name](g)
    with pytest.raises(InvariantError):
        g.validate()
    with pytest.raises(InvariantError):
        g._validate_batch()
    g._rollback()
    p.rollback()
    assert_unchanged(before, g, p)
    assert_caches_fresh(g)
    g.validate()


def test_a_batch_that_keeps_every_invariant_passes_both_checks() -> None:
    g, p = smoke()
    open_batch(g, p, [])
    g._set_preds(40, g.preds(40)[::-1])  # same edges, columns now in the other order
    g.validate()
    changed = g._validate_batch()
    assert changed == {40}
    p.validate(g)
    p.validate(g, changed=changed)
    assert INPUT not in g.preds(41)
    g._set_preds(41, [*g.preds(41), INPUT])  # a valid graph, but W_41 lacks those columns
    with pytest.raises(InvariantError, match="weight shape"):
        p.validate(g, changed=g._validate_batch())
    g._rollback()
    p.rollback()


def test_rollback_of_a_prune_keeps_the_group_order_and_the_caches() -> None:
    g, p = smoke()
    g.levels()
    before = snapshot(g, p)
    with pytest.raises(OrphanError):  # the input is g0's only predecessor
        apply_mutations(g, p, [Prune(20), DuplicateDepth(30), Disconnect(INPUT, 0)])
    assert_unchanged(before, g, p)  # g20 back in its place among the groups, too
    assert_caches_fresh(g)


def test_level_arrays_follow_many_batches_past_the_columns_capacity() -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[2])
    p = random_params(g, 0)
    rng = np.random.default_rng(0)
    for step in range(60):  # ids pass 2 x the first next_id many times; pools fill up
        ids = g.group_ids()
        batch: list[Mutation] = [DuplicateDepth(int(rng.choice(ids))),
                                 DuplicateWidth(int(rng.choice(ids)))]
        if step % 7 == 6:
            batch.append(Prune(int(rng.choice(ids))))
        apply_mutations(g, p, batch, step=step)
        assert_caches_fresh(g)


def test_copies_do_not_share_changes() -> None:
    g, p = smoke()
    g.levels()
    c, pc = g.copy(), p.copy()
    apply_mutations(c, pc, mutation_batch(c, 0))
    assert g == fresh(g) and g.depths() == fresh(g).depths()
    assert_caches_fresh(g)
    assert_caches_fresh(c)
    assert len(c) == len(g) + 8


def test_the_version_counts_every_change_and_rollback_but_not_reads() -> None:
    from streamdag.errors import StreamDagError
    from streamdag.mutation import Connect, DuplicateDepth, apply_mutations
    from streamdag.params import ParamStore

    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[5, 6, 7])
    p = ParamStore.initialize(g, np.random.default_rng(0))
    v = g.version
    g.levels(), g.depths(), g.level_arrays(), g.id_columns(), g.validate()
    assert g.version == v
    apply_mutations(g, p, [DuplicateDepth(1)])
    assert g.version > v
    v = g.version
    with pytest.raises(StreamDagError):  # a cycle: refused, rolled back
        apply_mutations(g, p, [Connect(2, 0)])
    assert g.version > v  # a reader that saw the batch's changes must look again


# ---------------------------------------------------------------- the flow order
def assert_topological(g: NetworkGraph, order: list[int]) -> None:
    assert sorted(order) == g.group_ids()
    at = {x: k for k, x in enumerate(order)}
    for x in order:
        assert all(at[q] < at[x] for q in g.preds(x) if q != INPUT), x


def count_repairs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seeds of every depth repair from now on."""
    seen: list[int] = []
    repair = NetworkGraph._repair_depths

    def counted(self: NetworkGraph) -> None:
        seen.append(len(self._depth_seeds))
        repair(self)

    monkeypatch.setattr(NetworkGraph, "_repair_depths", counted)
    return seen


def test_duplications_keep_the_flow_order_and_leave_the_depths_to_the_next_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    g, p = smoke()
    assert g.flow_order().tolist() == [x for lv in g.levels() for x in lv]  # level order first
    repairs = count_repairs(monkeypatch)
    bound = g.depth_bound()
    for seed in range(6):  # depth duplications upstream raise most of the graph
        report = apply_mutations(g, p, mutation_batch(g, seed))
        order = g.flow_order().tolist()
        assert_topological(g, order)
        for m, created in report.applied:
            if isinstance(m, DuplicateDepth):  # the copy sits right after its original
                assert order.index(created) == order.index(m.group) + 1
    assert repairs == []  # no depth work in six batches
    assert bound is not None and g.depth_bound() == bound  # a lower bound, left as it was
    assert g.depths() == fresh(g).depths()  # the first reader repairs them, once
    assert len(repairs) == 1 and repairs[0] > 0
    assert g.depth_bound() == fresh(g).depths()[OUTPUT]
    assert_caches_fresh(g)


def test_a_batch_the_flow_order_cannot_take_makes_it_again_in_level_order() -> None:
    g, p = smoke()
    g.flow_order()
    early, late = next(lv for lv in g.levels() if len(lv) > 1)[:2]  # no path between them
    apply_mutations(g, p, [Connect(late, early)])  # an edge backwards in the flow order
    assert_topological(g, g.flow_order().tolist())
    assert g.flow_order().tolist() == [x for lv in g.levels() for x in lv]
    assert_caches_fresh(g)


def test_a_refused_batch_gives_back_the_flow_order_and_the_pending_depths() -> None:
    g, p = smoke()
    g.flow_order()
    apply_mutations(g, p, mutation_batch(g, 0))
    flow, seeds = g.flow_order(), list(g._depth_seeds)
    assert seeds  # left for the next reader
    before = snapshot(g, p)
    with pytest.raises(UnknownGroupError):  # a valid duplication, then a bogus one
        apply_mutations(g, p, [DuplicateDepth(g.group_ids()[0]), DuplicateWidth(g.next_id + 5)])
    assert_unchanged(before, g, p)
    assert g.flow_order() is flow and g._depth_seeds == seeds
    assert_caches_fresh(g)


def test_a_cycle_through_created_groups_is_refused_with_a_flow_order() -> None:
    g, p = smoke()
    g.flow_order()
    a = g.group_ids()[0]
    before = snapshot(g, p)
    open_batch(g, p, [DuplicateDepth(a)])
    copy = g.next_id - 1
    g._set_preds(a, [copy])  # a reads its own copy: a cycle, which no order can hold
    with pytest.raises(InvariantError, match="cycle"):
        g._validate_batch()
    g._rollback()
    p.rollback()
    assert_unchanged(before, g, p)
    assert_topological(g, g.flow_order().tolist())
