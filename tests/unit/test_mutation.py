"""mutation.py: what each kind does, and refusals that are typed and leave nothing applied."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_network import DagSpec, assert_unchanged, random_params, snapshot

from streamdag.errors import (
    CapacityError,
    CycleError,
    GraphError,
    MutationError,
    OrphanError,
    UnknownGroupError,
)
from streamdag.graph import INPUT, OUTPUT
from streamdag.mutation import (
    Connect,
    Disconnect,
    DuplicateDepth,
    DuplicateWidth,
    Mutation,
    MutationQueue,
    Prune,
    apply_mutations,
)

DIAMOND = DagSpec(3, 2, (4, 5, 6, 2), ((-1,), (0,), (0, -1), (2, 1)))


def _net(max_groups: int | None = None):
    g = DIAMOND.build(max_groups=max_groups)
    return g, random_params(g, 0, momentum=True)


def test_duplicate_depth_inserts_an_identity() -> None:
    g, p = _net()
    report = apply_mutations(g, p, [DuplicateDepth(0)], step=12)
    assert report.created == [4]
    assert g.preds(4) == (0,) and g.succs(0) == [4]
    assert g.preds(1) == (4,) and g.preds(2) == (4, INPUT)
    assert g.group(4).born == 12
    np.testing.assert_array_equal(p.weight(4), np.eye(4))
    assert not p.bias(4).any() and not p.weight_momentum(4).any()


def test_duplicate_width_halves_successor_columns_and_copies_momentum() -> None:
    g, p = _net()
    w3, vw3 = p.weight(3).copy(), p.weight_momentum(3).copy()
    report = apply_mutations(g, p, [DuplicateWidth(2)])
    assert report.created == [4]
    assert g.preds(4) == g.preds(2) == (0, INPUT)
    assert g.preds(3) == (2, 4, 1)
    np.testing.assert_array_equal(p.weight(4), p.weight(2))
    np.testing.assert_array_equal(p.bias(4), p.bias(2))
    np.testing.assert_array_equal(p.weight(3)[:, :6], 0.5 * w3[:, :6])
    np.testing.assert_array_equal(p.weight(3)[:, 6:12], 0.5 * w3[:, :6])
    np.testing.assert_array_equal(p.weight(3)[:, 12:], w3[:, 6:])
    np.testing.assert_array_equal(p.weight_momentum(3)[:, 6:12], 0.5 * vw3[:, :6])


def test_width_duplication_of_a_sink_widens_the_output() -> None:
    g, p = _net()
    apply_mutations(g, p, [DuplicateWidth(3)])
    assert g.output.preds == (3, 4)
    assert p.weight(OUTPUT).shape == (2, 4)


def test_prune_reconnects() -> None:
    g, p = _net()
    apply_mutations(g, p, [Prune(0)])  # g1 loses its only input: takes over g0's (the input)
    assert g.preds(1) == (INPUT,)
    assert not p.weight(1).any()
    assert g.preds(2) == (INPUT,)
    g, p = _net()
    apply_mutations(g, p, [Prune(3)])  # g1 and g2 become sinks: they feed the output
    assert g.output.preds == (1, 2)
    assert not p.weight(OUTPUT).any()


def test_connect_and_disconnect() -> None:
    g, p = _net()
    w2 = p.weight(2).copy()
    apply_mutations(g, p, [Connect(1, 2)])
    assert g.preds(2) == (0, INPUT, 1)
    np.testing.assert_array_equal(p.weight(2)[:, :7], w2)
    assert not p.weight(2)[:, 7:].any()
    apply_mutations(g, p, [Disconnect(1, 3)])
    assert g.preds(3) == (2,)
    assert g.output.preds == (3,)  # g1 still feeds g2
    apply_mutations(g, p, [Disconnect(1, 2)])
    assert g.output.preds == (3, 1)  # g1 became a sink
    assert not p.weight(OUTPUT)[:, 2:].any()


def test_connect_from_a_sink_stops_it_feeding_the_output() -> None:
    g = DagSpec(2, 2, (3, 3), ((-1,), (-1,))).build()
    p = random_params(g, 0)
    apply_mutations(g, p, [Connect(0, 1)])
    assert g.output.preds == (1,)
    assert p.weight(OUTPUT).shape == (2, 3)


def test_report_and_queue() -> None:
    g, p = _net()
    q = MutationQueue()
    q.push(DuplicateDepth(1), Prune(3))
    q.extend([DuplicateWidth(0)])
    assert len(q) == 3 and next(iter(q)) == DuplicateDepth(1)
    report = q.apply(g, p)
    assert len(q) == 0 and len(report) == 3
    assert report.created == [4, 5] and report.removed == (3,)
    assert [op.kind for op in report.param_ops].count("alloc") >= 2
    with pytest.raises(MutationError, match="not a Mutation"):
        q.push("prune 3")  # type: ignore[arg-type]
    for m in (DuplicateDepth(1), Connect(INPUT, 2), Disconnect(0, 1)):
        assert Mutation.from_dict(m.to_dict()) == m
    with pytest.raises(MutationError, match="not a mutation"):
        Mutation.from_dict({"kind": "explode", "group": 1})


@pytest.mark.parametrize("batch,error,match", [
    ([Connect(3, 0)], CycleError, "cycle"),
    ([Connect(2, 2)], CycleError, "itself"),
    ([DuplicateDepth(0), Connect(3, 4)], CycleError, "cycle"),
    ([Connect(0, 2)], GraphError, "already feeds"),
    ([Disconnect(INPUT, 0)], OrphanError, "only input"),
    ([Disconnect(1, 2)], GraphError, "no edge"),
    ([Prune(9)], UnknownGroupError, "no group with id 9"),
    ([DuplicateWidth(42)], UnknownGroupError, "42"),
    ([Connect(INPUT, 77)], UnknownGroupError, "77"),
    ([Connect(OUTPUT, 1)], UnknownGroupError, "-2"),
    ([Prune(OUTPUT)], UnknownGroupError, "prune.group=output. refused: no group with id -2"),
    ([DuplicateDepth(INPUT)], UnknownGroupError, "no group with id -1"),
    ([Prune(1), DuplicateDepth(1)], UnknownGroupError, "mutation #1 depth"),
    ([DuplicateDepth(0), DuplicateWidth(1), Prune(0), Prune(0)], UnknownGroupError, "#3"),
    ([DuplicateDepth(0), DuplicateDepth(0), DuplicateDepth(0)], CapacityError, "cap of 6"),
])
def test_refused_batches_change_nothing(batch, error, match) -> None:
    g, p = _net(max_groups=6)
    before = snapshot(g, p)
    with pytest.raises(error, match=match):
        apply_mutations(g, p, batch, rng=np.random.default_rng(0), noise=0.1)
    assert_unchanged(before, g, p)
    g.validate()
    p.validate(g)
    # and the next batch works normally, with the next fresh id
    assert apply_mutations(g, p, [DuplicateDepth(0)]).created == [4]


def test_pruning_the_last_group_is_refused() -> None:
    g = DagSpec(2, 2, (3,), ((-1,),)).build()
    p = random_params(g, 0)
    before = snapshot(g, p)
    with pytest.raises(OrphanError, match="last group"):
        apply_mutations(g, p, [Prune(0)])
    assert_unchanged(before, g, p)
    g2 = DagSpec(2, 2, (3, 3), ((-1,), (0,))).build()
    p2 = random_params(g2, 0)
    before = snapshot(g2, p2)
    with pytest.raises(OrphanError, match="last group"):
        apply_mutations(g2, p2, [Prune(1), Prune(0)])
    assert_unchanged(before, g2, p2)


def test_noise_needs_an_rng() -> None:
    g, p = _net()
    with pytest.raises(MutationError, match="rng"):
        apply_mutations(g, p, [DuplicateWidth(0)], noise=0.1)


def test_ids_are_never_reused_after_prune() -> None:
    g, p = _net()
    apply_mutations(g, p, [Prune(3)])
    assert apply_mutations(g, p, [DuplicateDepth(1)]).created == [4]
    with pytest.raises(UnknownGroupError):
        apply_mutations(g, p, [DuplicateDepth(3)])


def _ops_key(report) -> list[tuple]:
    """Every field of every recorded op, values as bytes."""
    return [(op.kind, op.dst, op.src, op.dst_col, op.src_col, op.ncols, op.scale, op.rows,
             op.cols, op.slot, op.src_slot,
             tuple(np.asarray(v).tobytes() for v in (op.values or ())))
            for op in report.param_ops]


def test_values_elsewhere_records_the_same_batch_and_writes_no_values() -> None:
    """A store whose values a device mirror owns: every batch (refused ones included)
    gives the same layout, graph, report and recorded ops (noise draws and set values
    included) as on a store that writes values, and writes nothing into the host arenas;
    arenas it grows or compacts come out zero (no stale value copied)."""
    from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec

    work = build_workload(resolve_spec("smoke"))
    g1, p1 = work.graph.copy(), work.params.copy()
    g2, p2 = work.graph.copy(), work.params.copy()
    p2.values_elsewhere = True
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    pick = np.random.default_rng(8)
    refused = noise_ops = reallocated = 0
    for step in range(40):
        batch = mutation_batch(g1, step, n_depth=2, n_width=3)
        ids = g1.group_ids()
        extra = [Prune(int(pick.choice(ids))),
                 Connect(INPUT, int(pick.choice(ids))),
                 Disconnect(int(pick.choice(ids)), int(pick.choice(ids)))]
        batch += extra[: int(pick.integers(0, 4))]
        before = {k: a.copy() for k, a in p2.arenas().items()}
        version = p2.layout_version
        outcome = []
        for g, p, rng in ((g1, p1, r1), (g2, p2, r2)):
            try:
                outcome.append(apply_mutations(g, p, batch, step=step, rng=rng, noise=0.05))
            except GraphError as exc:
                outcome.append(type(exc))
        if isinstance(outcome[0], type):
            refused += 1
            assert outcome[1] is outcome[0]
        else:
            assert outcome[0].applied == outcome[1].applied
            assert outcome[0].removed == outcome[1].removed
            assert _ops_key(outcome[0]) == _ops_key(outcome[1])
            noise_ops += sum(op.kind == "add_noise" for op in outcome[1].param_ops)
        assert g1.to_dict() == g2.to_dict()
        assert {n: p1.slot(n) for n in p1.nodes()} == {n: p2.slot(n) for n in p2.nodes()}
        assert (p1.layout_version, p1.moved_version) == (p2.layout_version, p2.moved_version)
        if p2.layout_version == version:  # the same arenas: not a value written into them
            for kind, arena in p2.arenas().items():
                assert np.array_equal(arena, before[kind]), (step, kind)
        else:
            reallocated += 1
            for kind, arena in p2.arenas().items():
                assert not arena.any(), (step, kind)
    assert 0 < refused < 40 and noise_ops > 0 and reallocated > 0
