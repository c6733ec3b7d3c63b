"""graph.py: construction, depths and levels, DOT, (de)serialisation, refusals."""

from __future__ import annotations

import networkx as nx
import pytest
from helpers_network import DagSpec, dag_specs, depths_from_spec
from hypothesis import given, settings

from streamdag.errors import (
    CapacityError,
    ConfigError,
    CycleError,
    InvariantError,
    UnknownGroupError,
)
from streamdag.graph import INPUT, OUTPUT, NetworkGraph

DIAMOND = DagSpec(3, 2, (4, 5, 6, 2), ((-1,), (0,), (0, -1), (2, 1)))


def test_chain() -> None:
    g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8, 2, 5])
    assert g.group_ids() == [0, 1, 2] and len(g) == 3
    assert g.preds(1) == (0,) and g.output.preds == (2,)
    assert g.succs(INPUT) == [0] and g.succs(2) == [OUTPUT]
    assert g.fan_in(1) == 8 and g.fan_in(OUTPUT) == 5 and g.width(INPUT) == 4
    assert g.levels() == [[0], [1], [2]]
    assert g.next_id == 3


def test_diamond_depths_levels_offsets() -> None:
    g = DIAMOND.build()
    assert g.depths() == {INPUT: 0, 0: 1, 1: 2, 2: 2, 3: 3, OUTPUT: 4}
    assert g.levels() == [[0], [1, 2], [3]]
    assert g.topological_order() == [0, 1, 2, 3]
    assert g.column_offsets(2) == {0: 0, INPUT: 4}
    assert g.column_offsets(3) == {2: 0, 1: 6}
    assert g.fan_in(3) == 11
    assert g.output.preds == (3,)
    assert sorted(g.succs(0)) == [1, 2]
    assert list(g.edges()) == [(INPUT, 0), (0, 1), (0, 2), (INPUT, 2), (2, 3), (1, 3),
                               (3, OUTPUT)]


def test_output_reads_every_sink_in_id_order() -> None:
    g = DagSpec(2, 2, (3, 3, 3), ((-1,), (-1,), (0,))).build()
    assert g.output.preds == (1, 2)
    assert g.succs(1) == [OUTPUT]


@settings(max_examples=80)
@given(spec=dag_specs(max_groups=12))
def test_depths_levels_topology_on_random_dags(spec: DagSpec) -> None:
    g = spec.build()
    want = depths_from_spec(spec)
    d = g.depths()
    assert {k: v for k, v in d.items() if k != OUTPUT} == want
    order = g.topological_order()
    pos = {n: i for i, n in enumerate(order)}
    for n in order:
        assert all(p == INPUT or pos[p] < pos[n] for p in g.preds(n))
    levels = g.levels()
    assert sorted(x for lvl in levels for x in lvl) == g.group_ids()
    for k, lvl in enumerate(levels):
        assert all(d[x] == k + 1 for x in lvl) and lvl == sorted(lvl)
    nxg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    assert set(nxg.edges()) == set(g.edges())
    assert d[OUTPUT] == nx.dag_longest_path_length(nxg) if len(levels) else True
    assert NetworkGraph.from_dict(g.to_dict()) == g
    assert g.copy() == g


def test_to_dot() -> None:
    dot = DIAMOND.build().to_dot()
    assert dot.startswith("digraph network {") and dot.endswith("}")
    assert '"g2" [label="g2\\n6"];' in dot
    assert '"input" -> "g0";' in dot and '"g3" -> "output";' in dot
    assert dot.count("->") == 7


def test_from_dict_round_trip_keeps_born_and_cap() -> None:
    g = DIAMOND.build(max_groups=9)
    d = g.to_dict()
    d["groups"][1][3] = 17  # born
    g2 = NetworkGraph.from_dict(d)
    assert g2.group(1).born == 17 and g2.max_groups == 9
    assert g2.to_dict() == d


@pytest.mark.parametrize("edit,error", [
    (lambda d: d["groups"].__setitem__(0, [0, 4, [3], 0]), InvariantError),  # cycle
    (lambda d: d["groups"].__setitem__(0, [0, 4, [77], 0]), UnknownGroupError),
    (lambda d: d["groups"].__setitem__(0, [0, 0, [-1], 0]), InvariantError),  # width 0
    (lambda d: d["groups"].__setitem__(0, [0, 4, [], 0]), InvariantError),  # no preds
    (lambda d: d["groups"].__setitem__(0, [0, 4, [-1, -1], 0]), InvariantError),
    (lambda d: d.__setitem__("output_preds", [3, 1]), InvariantError),
    (lambda d: d.__setitem__("next_id", 2), InvariantError),
    (lambda d: d.pop("groups"), InvariantError),
    (lambda d: d.__setitem__("max_groups", 2), InvariantError),
])
def test_from_dict_refuses_inconsistent_descriptions(edit, error) -> None:
    d = DIAMOND.build().to_dict()
    edit(d)
    with pytest.raises(error):
        NetworkGraph.from_dict(d)


def test_from_edges_refusals() -> None:
    with pytest.raises(CycleError, match="cycle"):
        NetworkGraph.from_edges(n_inputs=2, n_classes=2, widths=[3, 3], preds=[[1], [0]])
    with pytest.raises(UnknownGroupError, match="group 0: predecessor 5"):
        NetworkGraph.from_edges(n_inputs=2, n_classes=2, widths=[3], preds=[[5]])
    with pytest.raises(ConfigError, match="2 widths but 1"):
        NetworkGraph.from_edges(n_inputs=2, n_classes=2, widths=[3, 3], preds=[[-1]])
    with pytest.raises(ConfigError, match="group 0: width"):
        NetworkGraph.from_edges(n_inputs=2, n_classes=2, widths=[2000], preds=[[-1]])
    with pytest.raises(ConfigError, match="width must be an integer"):
        NetworkGraph.chain(n_inputs=2, n_classes=2, widths=[2.5])
    with pytest.raises(ConfigError, match="n_classes >= 2"):
        NetworkGraph(4, 1)
    with pytest.raises(InvariantError, match="no groups"):
        NetworkGraph.chain(n_inputs=2, n_classes=2, widths=[])


def test_unknown_group_lookups() -> None:
    g = DIAMOND.build()
    for call in (lambda: g.group(4), lambda: g.succs(9), lambda: g.preds(-7)):
        with pytest.raises(UnknownGroupError, match="no group with id"):
            call()
    with pytest.raises(KeyError):  # also a KeyError, for code written against builtins
        g.group(4)


def test_cap() -> None:
    g = DIAMOND.build(max_groups=6)
    with pytest.raises(CapacityError, match="below the current size of 4"):
        g.set_max_groups(3)
    assert g.max_groups == 6
    g.set_max_groups(4)
    g.set_max_groups(None)
    assert g.max_groups is None
    with pytest.raises(CapacityError):
        NetworkGraph(2, 2, max_groups=0)
    with pytest.raises(InvariantError, match="exceed the cap"):
        DIAMOND.build(max_groups=3)


def test_repr_and_equality() -> None:
    g = DIAMOND.build()
    assert repr(g) == "NetworkGraph(groups=4, levels=3, inputs=3, classes=2, max_groups=None)"
    assert g == DIAMOND.build() and g != DIAMOND.build(max_groups=5)
