"""params.py: arenas, growth and compaction, transactions, state_dict, the op log."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from helpers_network import DagSpec, assert_params_identical, random_params

from streamdag.errors import CheckpointError, InvariantError, UnknownGroupError
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.params import ParamOp, ParamStore, Slot, _op

CHAIN = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8, 5])


def test_initialize_shapes_and_init() -> None:
    p = ParamStore.initialize(CHAIN, np.random.default_rng(0))
    assert p.nodes() == [OUTPUT, 0, 1]
    assert p.weight(0).shape == (8, 4) and p.weight(1).shape == (5, 8)
    assert p.weight(OUTPUT).shape == (3, 5) and p.bias(OUTPUT).shape == (3,)
    assert p.dtype == np.float32 and p.weight(0).dtype == np.float32
    assert not p.bias(0).any() and not p.weight_momentum(0).any()
    assert p.n_parameters() == 8 * 4 + 8 + 5 * 8 + 5 + 3 * 5 + 3
    p.validate(CHAIN)
    # the same seed gives the same parameters
    assert_params_identical(p, ParamStore.initialize(CHAIN, np.random.default_rng(0)))


def test_views_write_through_to_the_arena() -> None:
    p = ParamStore.initialize(CHAIN, np.random.default_rng(0), dtype=np.float64)
    p.weight(1)[2, 3] = 42.0
    s = p.slot(1)
    assert p.arenas()["weight"][s.w_off + 2 * s.cols + 3] == 42.0
    p.bias_momentum(0)[1] = -1.0
    assert p.arenas()["bias_mom"][p.slot(0).b_off + 1] == -1.0


def test_validate_catches_shape_mismatch_and_missing_nodes() -> None:
    p = ParamStore.initialize(CHAIN, np.random.default_rng(0))
    p.allocate(1, 5, 9)
    with pytest.raises(InvariantError, match=r"g1: weight shape \(5, 9\)"):
        p.validate(CHAIN)
    p.release(1)
    with pytest.raises(InvariantError, match=r"missing \[1\]"):
        p.validate(CHAIN)
    with pytest.raises(UnknownGroupError):
        p.weight(1)
    with pytest.raises(ValueError, match="input"):
        p.allocate(INPUT, 1, 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        ParamStore(dtype=np.int32)


def test_arena_grows_geometrically_and_keeps_values() -> None:
    p = ParamStore(dtype=np.float64)
    cap0 = p.arenas()["weight"].size
    p.allocate(0, 10, 10)
    p.weight(0)[...] = 3.0
    v0 = p.layout_version
    p.allocate(1, 40, 40)  # 1,600 > 1,024 - 100: must grow
    assert p.arenas()["weight"].size >= 2 * cap0
    assert p.layout_version == v0 + 1
    assert (p.weight(0) == 3.0).all()


def test_compaction_reclaims_holes_and_moves_slots() -> None:
    p = ParamStore(dtype=np.float64)
    for n in range(4):
        p.allocate(n, 10, 25)  # 250 each: 1,000 of 1,024
        p.weight(n)[...] = n
        p.bias(n)[...] = -n
        p.weight_momentum(n)[...] = 10 + n
    for n in (0, 1, 2):
        p.release(n)
    size, v0 = p.arenas()["weight"].size, p.layout_version
    p.allocate(4, 10, 25)  # no room at the top, 3/4 holes: compact in place
    assert p.arenas()["weight"].size == size
    assert p.layout_version == v0 + 1
    assert p.slot(3).w_off == 0 and p.slot(4).w_off == 250
    assert (p.weight(3) == 3).all() and (p.bias(3) == -3).all()
    assert (p.weight_momentum(3) == 13).all()
    assert not p.weight(4).any()


def test_transaction_rollback_restores_every_value() -> None:
    g = DagSpec(3, 2, (4, 4), ((-1,), (0,))).build()
    p = random_params(g, 1, momentum=True)
    before = {n: (p.weight(n).copy(), p.weight_momentum(n).copy(), p.bias(n).copy())
              for n in p.nodes()}
    p.begin()
    old = p.slot(1)
    p.allocate(1, 4, 8)  # replace g1's slot
    p.copy_columns(1, 0, old, 0, 4, src=1)
    p.copy_columns(1, 4, old, 0, 4, scale=0.5, src=1)
    p.allocate(7, 600, 10)  # forces the arena to grow inside the batch
    p.release(OUTPUT)
    p.rollback()
    assert p.nodes() == sorted(before)
    for n, (w, vw, b) in before.items():
        assert p.weight(n).tobytes() == w.tobytes()
        assert p.weight_momentum(n).tobytes() == vw.tobytes()
        assert p.bias(n).tobytes() == b.tobytes()
    with pytest.raises(RuntimeError, match="no parameter batch"):
        p.commit()


def test_no_compaction_inside_a_batch() -> None:
    p = ParamStore(dtype=np.float64)
    for n in range(4):
        p.allocate(n, 10, 25)
    p.begin()
    for n in (0, 1, 2):
        p.release(n)
    p.allocate(4, 10, 25)  # no room, 3/4 holes
    assert p.slot(3).w_off == 750 and p.slot(4).w_off == 1000  # grown, not compacted
    p.commit()
    with pytest.raises(RuntimeError, match="already open"):
        p.begin()
        p.begin()


def test_op_log_records_a_batch_in_order() -> None:
    p = ParamStore(dtype=np.float64)
    p.allocate(0, 2, 3)
    p.allocate(1, 2, 2)
    p.begin()
    p.allocate(2, 2, 3)
    p.copy_columns(2, 0, p.slot(0), 0, 3, scale=0.5, src=0)
    p.copy_bias(2, p.slot(0), src=0)
    p.set_identity(1)
    p.add_to_weights(2, np.ones((2, 3)))
    p.set_values(1, np.eye(2), np.ones(2))
    p.release(0)
    ops = p.commit()
    assert [op.kind for op in ops] == ["alloc", "copy_cols", "copy_bias", "identity",
                                       "add_weights", "set", "free"]
    assert ops[1].dst == 2 and ops[1].src == 0 and ops[1].ncols == 3 and ops[1].scale == 0.5
    assert (ops[0].rows, ops[0].cols) == (2, 3)
    np.testing.assert_array_equal(ops[4].values[0], np.ones((2, 3)))
    # outside a batch nothing is recorded
    p.allocate(5, 1, 1)
    p.begin()
    assert p.commit() == []


def test_identity_needs_a_square_slot() -> None:
    p = ParamStore()
    p.allocate(0, 2, 3)
    with pytest.raises(InvariantError, match="square"):
        p.set_identity(0)


def test_state_dict_round_trip_is_exact_and_compact() -> None:
    g = DagSpec(3, 2, (4, 6, 2), ((-1,), (0, -1), (1,))).build()
    for dtype in (np.float32, np.float64):
        p = random_params(g, 3, dtype=dtype, momentum=True)
        p.release(1)
        p.allocate(1, 6, 7)  # a hole, and g1 moved to the top
        p.weight(1)[...] = 5
        sd = p.state_dict()
        assert sd["param_weight"].size == sum(p.weight(n).size for n in p.nodes())
        q = ParamStore.from_state_dict(sd)
        assert_params_identical(q, p)
        assert q.n_parameters() == p.n_parameters()
    c = p.copy()
    c.weight(0)[...] = 0
    assert p.weight(0).any()  # a deep copy
    with pytest.raises(CheckpointError, match="param_bias"):
        ParamStore.from_state_dict({k: v for k, v in sd.items() if k != "param_bias"})


def test_nbytes() -> None:
    p = ParamStore(dtype=np.float32)
    p.allocate(0, 4, 4)
    assert p.nbytes()["live"] == 2 * 4 * (16 + 4)
    assert p.nbytes()["capacity"] == 2 * 4 * (p.arenas()["weight"].size + p.arenas()["bias"].size)


def test_offsets_follow_every_slot_change() -> None:
    p = ParamStore(capacity=64)
    rng = np.random.default_rng(3)

    def check() -> None:
        nodes = np.array(p.nodes())
        w, b = p.offsets(nodes)
        assert w.tolist() == [p.slot(n).w_off for n in nodes]
        assert b.tolist() == [p.slot(n).b_off for n in nodes]

    for node in [OUTPUT, 0, 1, 2, 7]:
        p.allocate(node, 3, 4)
    check()
    p.begin()
    p.allocate(40, 2, 2)  # past the table's size: it grows
    p.release(1)
    check()
    p.rollback()
    check()
    p.release(2)
    for node in range(8, 30):  # enough to fill the arena and compact it
        p.allocate(node, int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    check()
    with pytest.raises(UnknownGroupError):
        p.offsets(np.array([0, 2]))
    with pytest.raises(UnknownGroupError):
        p.offsets(np.array([10**6]))


def test_the_fast_op_constructor_builds_what_the_dataclass_builds() -> None:
    fields = [(f.name, f.default) for f in dataclasses.fields(ParamOp)]
    params = [(n, pr.default) for n, pr in inspect.signature(_op).parameters.items()]
    assert params[:2] == [("kind", inspect.Parameter.empty), ("dst", inspect.Parameter.empty)]
    assert params[2:] == fields[2:]  # same names, order and defaults
    s = Slot(1, 2, 3, 4)
    kw = {"src": 5, "rows": 3, "cols": 4, "dst_col": 1, "src_col": 2, "ncols": 3,
          "scale": 0.5, "values": (np.ones(2),), "slot": s, "src_slot": s}
    made, want = _op("copy_cols", 7, **kw), ParamOp("copy_cols", 7, **kw)
    assert made == want and repr(made) == repr(want) and vars(made) == vars(want)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.dst = 8  # type: ignore[misc]


def test_allocate_from_does_what_allocate_and_the_copies_do() -> None:
    runs = [(0, 0, 3, 1.0), (3, 3, 2, 0.5), (5, 3, 2, 0.5), (7, 5, 0, 1.0)]  # last one empty
    stores = []
    for fused in (False, True):
        p = ParamStore(dtype=np.float32)
        src = p.allocate(0, 4, 5)
        for a in p.arenas().values():
            a[:] = np.random.default_rng(0).standard_normal(a.size)  # garbage past the top too
        p.begin()
        if fused:
            p.allocate_from(1, 7, src, runs, src=0)
            p.allocate_from(2, 9, src, runs, src=0)  # two columns not covered: zeroed
        else:
            for node, cols in ((1, 7), (2, 9)):
                p.allocate(node, 4, cols)
                for d, c, n, scale in runs:
                    p.copy_columns(node, d, src, c, n, scale=scale, src=0)
                p.copy_bias(node, src, src=0)
        stores.append((p, p.commit()))
    (a, ops_a), (b, ops_b) = stores
    assert ops_a == ops_b
    assert [op.kind for op in ops_b] == ["alloc", "copy_cols", "copy_cols", "copy_cols",
                                         "copy_bias"] * 2
    for x, y in zip(a.arenas().values(), b.arenas().values(), strict=True):
        assert x.tobytes() == y.tobytes()


def test_rollback_restores_released_slots_in_place_and_their_offsets() -> None:
    p = ParamStore()
    for node in (OUTPUT, 0, 1, 2):
        p.allocate(node, 2, 3)
    p.offsets(np.array([0]))  # builds the offset table, which the batch then changes
    table = list(p._slots.items())
    p.begin()
    p.release(1)
    p.allocate(0, 2, 4)
    p.allocate(5, 1, 1)
    p.rollback()
    assert list(p._slots.items()) == table  # the same slots, in the same order
    w, b = p.offsets(np.array([OUTPUT, 0, 1, 2]))
    assert w.tolist() == [s.w_off for _, s in table]
    assert b.tolist() == [s.b_off for _, s in table]
    with pytest.raises(UnknownGroupError):
        p.offsets(np.array([5]))


def test_begin_compacts_a_mostly_empty_arena_and_tells_where_slots_went() -> None:
    p = ParamStore(dtype=np.float64)
    for n in range(4):
        p.allocate(n, 10, 25)  # 1,000 of 1,024
        p.weight(n)[...] = n
        p.bias(n)[...] = -n
    for n in (0, 1, 2):
        p.release(n)
    size, v0 = p.arenas()["weight"].size, p.layout_version
    p.begin()  # 3/4 used, 3/4 of that holes: compact before the batch, capacity kept
    assert p.arenas()["weight"].size == size and p.layout_version == p.moved_version == v0 + 1
    assert p.slot(3).w_off == 0 and (p.weight(3) == 3).all() and (p.bias(3) == -3).all()
    [(version, moves)] = p.moves_since(v0) or []
    assert version == p.layout_version and moves.tolist() == [[750, 0, 250, 30, 0, 10]]
    assert p.moves_since(p.layout_version) == []
    p.rollback()  # the compaction changed no value: it stays
    assert p.slot(3).w_off == 0 and p.moves_since(v0) is not None
    for _ in range(9):  # fill the arena and free it again, batch after batch
        p.begin()
        for n in (10, 11, 12):
            p.allocate(n, 10, 25)
        for n in (10, 11, 12):
            p.release(n)
        p.commit()
    assert p.moved_version == v0 + 9 and p.arenas()["weight"].size == size
    assert p.moves_since(v0) is None  # 9 compactions since: the first is forgotten
    assert len(p.moves_since(v0 + 1) or []) == 8
