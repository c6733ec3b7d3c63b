"""backends/tables.py: NetTables, checked field by field against a per-node reading of the
graph and the parameter slots (the layout of ``struct Node`` in kernels/network.cu).

The reference walks nodes and edges one at a time in plain Python; ``NetTables.build`` is
vectorised over them. Graphs: random DAGs, the same after random mutation batches, chains,
dag-bench presets and a digits-sized network grown by duplications.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers_network import DagSpec, dag_specs, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.backends import tables
from streamdag.backends.tables import WG_CPT, WG_THREADS, WG_XCOLS, NetTables
from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec
from streamdag.errors import ConfigError, StreamDagError
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.mutation import DuplicateDepth, DuplicateWidth, Mutation, apply_mutations
from streamdag.params import ParamStore


def check_tables(graph: NetworkGraph, params: ParamStore, *, flow: bool = False) -> None:
    """Every field of ``NetTables.build(graph, params, flow=flow)``, node by node and edge by
    edge: nodes level by level, or in the graph's flow order as one level."""
    t = NetTables.build(graph, params, flow=flow)
    levels = [graph.flow_order().tolist()] if flow else graph.levels()
    order = [INPUT, *[g for lv in levels for g in lv], OUTPUT]
    assert t.by_level is not flow
    index = {node: i for i, node in enumerate(order)}
    width = [graph.width(node) for node in order]
    act = [sum(width[:i]) for i in range(len(order))]
    assert t.row_stride == sum(width)
    assert t.level_start.tolist() == [0, *np.cumsum([1, *map(len, levels)]).tolist(),
                                      len(order)]
    assert t.group_ids.tolist() == graph.group_ids()
    succ_records: dict[int, list[tuple[int, ...]]] = {i: [] for i in range(len(order))}
    succ_nodes: dict[int, list[int]] = {i: [] for i in range(len(order))}
    pred_at = col_at = 0
    for i, node in enumerate(order):
        rec = t.nodes[i].tolist()
        if node == INPUT:
            assert rec == [width[0]] + [0] * 11
            continue
        preds = graph.preds(node)
        slot = params.slot(node)
        fan_in = graph.fan_in(node)
        assert rec[:7] == [width[i], fan_in, slot.w_off, slot.b_off, act[i], pred_at,
                           len(preds)], f"node {node}"
        assert rec[9:] == [int(node != OUTPUT), col_at, 0], f"node {node}"
        assert t.preds[pred_at : pred_at + len(preds)].tolist() == [index[p] for p in preds]
        col = 0
        for p in preds:
            want = list(range(act[index[p]], act[index[p]] + graph.width(p)))
            assert t.colmap[col_at + col : col_at + col + len(want)].tolist() == want
            if p != INPUT:
                succ_records[index[p]].append((act[i], slot.w_off + col, width[i], fan_in))
                succ_nodes[index[p]].append(i)
            col += graph.width(p)
        pred_at += len(preds)
        col_at += fan_in
    assert len(t.colmap) == col_at
    at = 0
    for i in range(len(order)):
        n = len(succ_records[i])
        assert t.nodes[i, 7:9].tolist() == ([0, 0] if i == 0 else [at, n]), f"succs of {i}"
        assert [tuple(r) for r in t.succs[at : at + n].tolist()] == succ_records[i]
        assert t.succ_node[at : at + n].tolist() == succ_nodes[i]
        at += n
    slot_of = {g: k for k, g in enumerate(graph.group_ids())}
    want_tiles = []
    for i, node in enumerate(order[1:], start=1):
        per_tile = min(max(WG_CPT * (WG_THREADS // min(width[i], 64)), 1), WG_XCOLS)
        fan_in = graph.fan_in(node)
        want_tiles += [[i, c0, min(per_tile, fan_in - c0), slot_of.get(node, -1)]
                       for c0 in range(0, fan_in, per_tile)]
    assert t.tiles.tolist() == want_tiles
    for name in ("nodes", "preds", "succs", "succ_node", "colmap", "level_start", "tiles",
                 "group_ids"):
        assert getattr(t, name).dtype == np.int32, name


def random_batch(graph: NetworkGraph, draw: st.DrawFn) -> list[Mutation]:
    """1-4 mutations of every kind (some to be refused), on random groups."""
    ids = graph.group_ids()
    kinds = st.sampled_from(["depth", "width", "prune", "connect", "disconnect"])
    batch: list[Mutation] = []
    for kind in draw(st.lists(kinds, min_size=1, max_size=4)):
        g = draw(st.sampled_from(ids))
        if kind in ("depth", "width", "prune"):
            batch.append(Mutation.from_dict({"kind": kind, "group": g}))
        else:
            src = draw(st.sampled_from([INPUT, *ids] if kind == "connect" else graph.preds(g)))
            batch.append(Mutation.from_dict({"kind": kind, "src": src, "dst": g}))
    return batch


@settings(max_examples=40)
@given(spec=dag_specs(max_groups=10, max_width=20), data=st.data())
def test_tables_on_random_dags_and_after_random_batches(spec: DagSpec, data: st.DataObject
                                                        ) -> None:
    g = spec.build()
    p = random_params(g, 0)
    check_tables(g, p)
    for _ in range(data.draw(st.integers(1, 4))):
        with contextlib.suppress(StreamDagError):  # refused batches change nothing
            apply_mutations(g, p, random_batch(g, data.draw), rng=np.random.default_rng(0),
                            noise=0.01)
        check_tables(g, p, flow=data.draw(st.booleans()))


@pytest.mark.parametrize("widths", [[3], [5, 7, 9], list(range(1, 30)), [64, 1, 1024]])
def test_tables_on_chains(widths: list[int]) -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=widths)
    check_tables(g, random_params(g, 0))


@pytest.mark.parametrize("preset", ["smoke", "wide"])
@pytest.mark.parametrize("flow", [False, True])
def test_tables_on_dagbench_presets_and_their_mutation_batches(preset: str, flow: bool
                                                               ) -> None:
    work = build_workload(resolve_spec(preset))
    g, p = work.graph, work.params
    check_tables(g, p, flow=flow)
    for seed in range(3):
        apply_mutations(g, p, mutation_batch(g, seed), step=seed)
        check_tables(g, p, flow=flow)


def test_tables_on_a_digits_sized_network_grown_to_48_groups() -> None:
    g = NetworkGraph.chain(n_inputs=64, n_classes=10, widths=[32, 32], max_groups=48)
    p = random_params(g, 0, dtype=np.float32)
    rng = np.random.default_rng(1)
    while len(g) < 48:
        pick = int(rng.choice(g.group_ids()))
        mutation = DuplicateDepth(pick) if rng.random() < 0.5 else DuplicateWidth(pick)
        apply_mutations(g, p, [mutation], rng=rng, noise=0.01)
        check_tables(g, p)


def test_tables_refuse_what_32_bit_offsets_cannot_hold(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8])
    p = random_params(g, 0)
    monkeypatch.setattr(tables, "MAX_INT32", 10)
    with pytest.raises(ConfigError, match="32-bit"):
        NetTables.build(g, p)


@pytest.mark.parametrize("preset", ["S", "wide"])
@pytest.mark.parametrize("flow", [False, True])
def test_the_device_build_inputs_give_the_host_tables_shape(preset: str, flow: bool) -> None:
    # what the host keeps of tables built on the device (TableInputs.shape, the sums read
    # back) is NetTables.build's shape, field by field; the inputs' order and stats slots
    # are the tables' (after batches, for the flow order)
    work = build_workload(resolve_spec(preset))
    g, p = work.graph, work.params
    for seed in range(2):
        g.flow_order()
        apply_mutations(g, p, mutation_batch(g, seed), step=seed)
    want = NetTables.build(g, p, flow=flow)
    inp = tables.TableInputs.build(g, p, flow=flow)
    got = inp.shape(len(want.tiles), want.row_stride)
    for field in ("n_nodes", "n_tiles", "row_stride", "n_inputs", "n_classes", "out_fan_in",
                  "max_width", "mean_width", "share16", "share32", "n_levels", "by_level"):
        assert getattr(got, field) == getattr(want.shape, field), field
    np.testing.assert_array_equal(got.level_start, want.level_start)
    np.testing.assert_array_equal(got.group_ids, want.group_ids)
    order = g.flow_order() if flow else [x for lv in g.levels() for x in lv]
    np.testing.assert_array_equal(inp.order, order)
    np.testing.assert_array_equal(want.group_ids[inp.perm], order)  # slot = rank by id


@pytest.mark.parametrize(("overrides", "settled", "growing"), [
    ({}, "persistent", "persistent"),                      # dag-bench S: 13 groups a level
    ({"width": 32}, "persistent", "persistent"),
    ({"width": 8}, "graph", "persistent"),                 # neither 16 nor 32 wide, 1,024
    ({"width": 24}, "graph", "persistent"),
    ({"groups": 256, "width": 8}, "persistent", "persistent"),  # the same, but few
    ({"groups": 4096}, "graph", "persistent"),             # dag-bench M: 15 a level
    ({"groups": 4096, "width": 32}, "persistent", "persistent"),
    ({"groups": 4096, "window": 32}, "persistent", "persistent"),  # 8 a level
    ({"width": 64}, "graph", "graph"),                     # S64
    ({"groups": 1024, "levels": 16, "window": 1024}, "graph", "graph"),  # 64 groups a level
    ({"groups": 1024, "levels": 32, "window": 1024}, "graph", "graph"),  # 32 a level
    ({"groups": 1024, "levels": 64, "window": 1024}, "persistent", "persistent"),  # 16
])
def test_auto_mode_runs_the_level_kernels_where_they_are_faster(
        overrides: dict[str, int], settled: str, growing: str) -> None:
    # always on wide levels or wide groups; on large networks of 16-wide groups at 14 or
    # more a level, or of groups neither 16 nor 32 wide, only once the network has settled
    # (a graph re-capture per batch costs more than their faster steps save while it grows)
    from streamdag.backends.cuda import auto_mode

    work = build_workload(resolve_spec("S", **overrides))
    shape = NetTables.build(work.graph, work.params).shape
    assert (auto_mode(shape), auto_mode(shape, growing=True)) == (settled, growing)


def check_wgrad_runs(graph: NetworkGraph, params: ParamStore, chunks: int) -> None:
    """graph mode's weight-gradient runs (``wgrad_chunks``): every tile in exactly one run,
    each run branching off only once the backward has passed every level that reads the
    weights it updates (its nodes' predecessors' levels, the input's aside) and their own."""
    from streamdag.backends.cuda import reader_levels, wgrad_chunks
    from streamdag.backends.tables import TableInputs

    t = NetTables.build(graph, params)
    n = len(t.nodes)
    level = np.repeat(np.arange(len(t.level_start) - 1), np.diff(t.level_start))
    reader = reader_levels(TableInputs.build(graph, params))
    for v in range(1, n):  # brute force, from the host tables' predecessor lists
        preds = t.preds[t.nodes[v, 5]: t.nodes[v, 5] + t.nodes[v, 6]]
        assert reader[v] == min([level[v], *(level[p] for p in preds if p != 0)]), v
    tile_start = np.searchsorted(t.tiles[:, 0], np.arange(n + 1))
    runs = wgrad_chunks(t.level_start, reader, tile_start, chunks)
    assert [r[0] for r in runs] == sorted((r[0] for r in runs), reverse=True)
    assert len(runs) <= max(chunks, 2)  # the output's run and up to chunks - 1 others
    covered = np.zeros(len(t.tiles), np.intp)
    for fork, first, count in runs:
        covered[first: first + count] += 1
        assert all(1 <= fork <= reader[v] for v in set(t.tiles[first: first + count, 0]))
    assert (covered == 1).all()


@settings(max_examples=40)
@given(spec=dag_specs(max_groups=12, max_width=20), chunks=st.sampled_from([1, 2, 3, 32]),
       data=st.data())
def test_weight_gradient_runs_wait_for_every_reader_of_their_weights(
        spec: DagSpec, chunks: int, data: st.DataObject) -> None:
    g = spec.build()
    p = random_params(g, 0)
    check_wgrad_runs(g, p, chunks)
    for _ in range(data.draw(st.integers(1, 3))):
        with contextlib.suppress(StreamDagError):  # refused batches change nothing
            apply_mutations(g, p, random_batch(g, data.draw), rng=np.random.default_rng(0),
                            noise=0.01)
        check_wgrad_runs(g, p, chunks)


def test_weight_gradient_runs_on_dagbench_s_branch_off_early() -> None:
    # dag-bench draws predecessors from the 64 groups before: most runs branch off long
    # before the backward chain ends (fork level 1)
    from streamdag.backends.cuda import WG_CHUNKS, reader_levels, wgrad_chunks
    from streamdag.backends.tables import TableInputs

    work = build_workload(resolve_spec("S"))
    check_wgrad_runs(work.graph, work.params, WG_CHUNKS)
    t = NetTables.build(work.graph, work.params)
    runs = wgrad_chunks(t.level_start, reader_levels(TableInputs.build(work.graph, work.params)),
                        np.searchsorted(t.tiles[:, 0], np.arange(len(t.nodes) + 1)), WG_CHUNKS)
    early = sum(count for fork, _, count in runs if fork > 1)
    assert early > 0.8 * len(t.tiles), runs


@given(batch=st.integers(1, 5000), nodes=st.integers(1, 3000), sms=st.integers(1, 200),
       max_width=st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_tile_rows_fill_the_gpu_without_idle_threads(batch: int, nodes: int, sms: int,
                                                     max_width: int) -> None:
    """The tiled level kernels' tile: a power of two within [TILE_MIN_ROWS, TILE_ROWS], no
    shorter than a block has row groups for the widest group, and the longest such tile
    whose level reaches ``fill`` blocks (else the shortest allowed)."""
    from streamdag.backends.cuda import TILE_FILL, TILE_MIN_ROWS, TILE_ROWS, TILE_THREADS, tile_rows

    fill = TILE_FILL * sms
    tr = tile_rows(batch, nodes, fill, max_width)
    floor = min(TILE_ROWS, max(TILE_MIN_ROWS, TILE_THREADS // max_width))
    assert tr & (tr - 1) == 0 and floor <= tr <= TILE_ROWS

    def blocks(rows: int) -> int:
        return nodes * -(-batch // rows)

    assert tr == TILE_ROWS or blocks(tr * 2) < fill  # no longer tile would have filled
    assert tr // 2 < floor or blocks(tr) >= fill  # it stopped halving: the level fills


def test_tile_rows_of_dagbench_m_levels() -> None:
    """16-wide groups get 16-row tiles however small the level (8-row tiles idled half of
    a block's threads); 64-wide ones still go down to 8 rows."""
    from streamdag.backends.cuda import tile_rows

    assert tile_rows(256, 15, 2 * 132, 16) == 16
    assert tile_rows(256, 15, 2 * 132, 64) == 8
    assert tile_rows(256, 600, 2 * 132, 16) == 32
