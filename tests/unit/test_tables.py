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
from streamdag.backends.tables import WG_THREADS, WG_XCOLS, NetTables, TableBuilder
from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec
from streamdag.errors import ConfigError, StreamDagError
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.mutation import DuplicateDepth, DuplicateWidth, Mutation, apply_mutations
from streamdag.params import ParamStore


def check_tables(graph: NetworkGraph, params: ParamStore,
                 t: NetTables | None = None) -> NetTables:
    """Every field of ``t`` (default: ``NetTables.build(graph, params)``), node by node and
    edge by edge. Where runs sit in the pools and where a node's columns sit in a batch row
    is the builder's choice: checked is that they hold what they must and do not overlap."""
    t = NetTables.build(graph, params) if t is None else t
    levels = graph.levels()
    order = [INPUT, *[g for lv in levels for g in lv], OUTPUT]
    index = {node: i for i, node in enumerate(order)}
    width = [graph.width(node) for node in order]
    act = t.nodes[:, 4].tolist()
    assert act[0] == 0 and t.live_row == sum(width) <= t.row_stride
    used = np.zeros(t.row_stride, int)  # every live column once, within the row
    for i in range(len(order)):
        used[act[i] : act[i] + width[i]] += 1
    assert used.sum() == sum(width) and used.max() == 1
    assert t.level_start.tolist() == [0, *np.cumsum([1, *map(len, levels)]).tolist(),
                                      len(order)]
    assert t.group_ids.tolist() == graph.group_ids()
    succ_records: dict[int, list[tuple[int, ...]]] = {i: [] for i in range(len(order))}
    succ_nodes: dict[int, list[int]] = {i: [] for i in range(len(order))}
    for i, node in enumerate(order):
        rec = t.nodes[i].tolist()
        if node == INPUT:
            assert rec[:4] == [width[0], 0, 0, 0] and rec[6] == rec[8] == rec[9] == 0
            continue
        preds = graph.preds(node)
        slot = params.slot(node)
        fan_in = graph.fan_in(node)
        pred_at, col_at = rec[5], rec[10]
        assert rec[:4] == [width[i], fan_in, slot.w_off, slot.b_off], f"node {node}"
        assert [rec[6], rec[9], rec[11]] == [len(preds), int(node != OUTPUT), 0], f"node {node}"
        assert t.preds[pred_at : pred_at + len(preds)].tolist() == [index[p] for p in preds]
        col = 0
        for p in preds:
            want = list(range(act[index[p]], act[index[p]] + graph.width(p)))
            assert t.colmap[col_at + col : col_at + col + len(want)].tolist() == want
            if p != INPUT:
                succ_records[index[p]].append((act[i], slot.w_off + col, width[i], fan_in))
                succ_nodes[index[p]].append(i)
            col += graph.width(p)
        assert col == fan_in
    key = [node + 2 for node in order]  # successor runs are by key: the output's first
    for i in range(len(order)):
        at, n = t.nodes[i, 7:9].tolist()
        by_key = sorted(range(len(succ_nodes[i])), key=lambda k: key[succ_nodes[i][k]])
        assert n == len(by_key), f"succs of {i}"
        assert [tuple(r) for r in t.succs[at : at + n].tolist()] == [
            succ_records[i][k] for k in by_key]
        assert t.succ_node[at : at + n].tolist() == [succ_nodes[i][k] for k in by_key]
    slot_of = {g: k for k, g in enumerate(graph.group_ids())}
    want_tiles = []
    for i, node in enumerate(order[1:], start=1):
        per_tile = min(max(2 * (WG_THREADS // min(width[i], 64)), 1), WG_XCOLS)
        fan_in = graph.fan_in(node)
        want_tiles += [[i, c0, min(per_tile, fan_in - c0), slot_of.get(node, -1)]
                       for c0 in range(0, fan_in, per_tile)]
    assert t.tiles.tolist() == want_tiles
    for name in ("nodes", "preds", "succs", "succ_node", "colmap", "level_start", "tiles",
                 "group_ids"):
        assert getattr(t, name).dtype == np.int32, name
    return t


def check_patched(builder: TableBuilder, graph: NetworkGraph, params: ParamStore,
                  before: NetTables | None) -> NetTables:
    """``builder.update``'s tables, checked like fresh ones, and what they report as
    unchanged since ``before`` really unchanged (what a device copy does not upload)."""
    t = check_tables(graph, params, builder.update(graph, params))
    for name, n in t.fresh.items():
        assert before is not None or n == 0
        if n:
            assert before is not None
            assert np.array_equal(getattr(t, name)[:n], getattr(before, name)[:n]), name
    return t


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
    builder = TableBuilder()
    t = check_patched(builder, g, p, None)
    for _ in range(data.draw(st.integers(1, 6))):
        with contextlib.suppress(StreamDagError):  # refused batches change nothing
            apply_mutations(g, p, random_batch(g, data.draw), rng=np.random.default_rng(0),
                            noise=0.01)
        check_tables(g, p)
        t = check_patched(builder, g, p, t)


@pytest.mark.parametrize("widths", [[3], [5, 7, 9], list(range(1, 30)), [64, 1, 1024]])
def test_tables_on_chains(widths: list[int]) -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=widths)
    check_tables(g, random_params(g, 0))


@pytest.mark.parametrize("preset", ["smoke", "wide"])
def test_tables_on_dagbench_presets_and_their_mutation_batches(preset: str) -> None:
    work = build_workload(resolve_spec(preset))
    g, p = work.graph, work.params
    check_tables(g, p)
    builder = TableBuilder()
    t = check_patched(builder, g, p, None)
    for seed in range(3):
        apply_mutations(g, p, mutation_batch(g, seed), step=seed)
        check_tables(g, p)
        t = check_patched(builder, g, p, t)


def test_patched_tables_follow_many_batches_and_patch_rather_than_rebuild() -> None:
    """60 batches of duplications, prunings and rewiring on one builder: every result
    checked; most batches patch (the column map only grows at its end); big changes and
    garbage make some rebuild."""
    work = build_workload(resolve_spec("smoke"))
    g, p = work.graph, work.params
    rng = np.random.default_rng(3)
    builder = TableBuilder()
    t = check_patched(builder, g, p, None)
    patched = rebuilt = 0
    for step in range(60):
        ids = g.group_ids()
        batch = mutation_batch(g, step, n_depth=2, n_width=2)
        for gid in rng.choice(ids, size=2, replace=False).tolist():
            batch.append(Mutation.from_dict({"kind": "prune", "group": gid}))
        with contextlib.suppress(StreamDagError):
            apply_mutations(g, p, batch, step=step, rng=rng, noise=0.01)
        t = check_patched(builder, g, p, t)
        patched += t.fresh["colmap"] > 0
        rebuilt += t.fresh["colmap"] == 0
    assert patched >= 30 and rebuilt >= 1, (patched, rebuilt)


def test_tables_on_a_digits_sized_network_grown_to_48_groups() -> None:
    g = NetworkGraph.chain(n_inputs=64, n_classes=10, widths=[32, 32], max_groups=48)
    p = random_params(g, 0, dtype=np.float32)
    rng = np.random.default_rng(1)
    builder = TableBuilder()
    t = check_patched(builder, g, p, None)
    while len(g) < 48:
        pick = int(rng.choice(g.group_ids()))
        mutation = DuplicateDepth(pick) if rng.random() < 0.5 else DuplicateWidth(pick)
        apply_mutations(g, p, [mutation], rng=rng, noise=0.01)
        check_tables(g, p)
        t = check_patched(builder, g, p, t)


def test_tables_refuse_what_32_bit_offsets_cannot_hold(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8])
    p = random_params(g, 0)
    monkeypatch.setattr(tables, "MAX_INT32", 10)
    with pytest.raises(ConfigError, match="32-bit"):
        NetTables.build(g, p)
