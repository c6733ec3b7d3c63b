"""The growth selection rule, the cap, and the policy's cap and cooldown, on random graphs.

``select_closest_to_input`` is checked against an independent implementation: networkx
connected components of the undirected subgraph induced by the marked groups, depths
computed straight from the predecessor lists.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from helpers_network import DagSpec, dag_specs, depths_from_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.backends.base import GroupStats
from streamdag.growth import GrowthPolicy, apply_cap, select_closest_to_input
from streamdag.mutation import DuplicateDepth, DuplicateWidth, Prune, apply_mutations
from streamdag.params import ParamStore


def expected_selection(spec: DagSpec, marked: set[int]) -> list[int]:
    depth = depths_from_spec(spec)
    und = nx.Graph()
    und.add_nodes_from(marked)
    und.add_edges_from((p, g) for g, ps in enumerate(spec.preds) for p in ps
                       if p in marked and g in marked)
    return sorted(min(comp, key=lambda g: (depth[g], g)) for comp in
                  nx.connected_components(und))


@settings(max_examples=150)
@given(spec=dag_specs(max_groups=14, max_width=3), data=st.data())
def test_selection_matches_connected_components(spec: DagSpec, data: st.DataObject) -> None:
    graph = spec.build()
    marked = data.draw(st.sets(st.sampled_from(graph.group_ids())))
    chosen = select_closest_to_input(graph, marked)
    assert chosen == expected_selection(spec, set(marked))
    assert set(chosen) <= set(marked)
    assert chosen == sorted(chosen)


def test_selection_on_a_chain_keeps_the_first_of_each_run() -> None:
    spec = DagSpec(2, 2, (4,) * 6, ((-1,), (0,), (1,), (2,), (3,), (4,)))
    graph = spec.build()
    assert select_closest_to_input(graph, [1, 2, 4, 5]) == [1, 4]
    assert select_closest_to_input(graph, []) == []


def test_selection_reads_depths_only_for_runs_of_two_or_more() -> None:
    # after a batch the depths wait for their next reader (a repair): groups that are not
    # joined to another marked one need none
    spec = DagSpec(2, 2, (4,) * 6, ((-1,), (0,), (1,), (2,), (3,), (4,)))
    graph = spec.build()
    graph.flow_order()
    apply_mutations(graph, ParamStore.initialize(graph, np.random.default_rng(0)),
                    [DuplicateDepth(2)])
    assert graph._depth_seeds  # pending
    assert select_closest_to_input(graph, [0, 2, 5]) == [0, 2, 5]
    assert graph._depth_seeds  # still pending
    assert select_closest_to_input(graph, [3, 4]) == [3]  # a run: the depths, repaired
    assert not graph._depth_seeds


def test_selection_ties_on_depth_go_to_the_smaller_id() -> None:
    # 0 and 1 both read the input (depth 1) and both feed 2.
    spec = DagSpec(2, 2, (4, 4, 4), ((-1,), (-1,), (1, 0)))
    graph = spec.build()
    assert select_closest_to_input(graph, [0, 1, 2]) == [0]
    assert select_closest_to_input(graph, [1, 2]) == [1]
    assert select_closest_to_input(graph, [0, 1]) == [0, 1]  # not joined by an edge


@settings(max_examples=150)
@given(scores=st.dictionaries(st.integers(0, 50), st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
                              min_size=0, max_size=20),
       room=st.integers(-2, 25))
def test_apply_cap_keeps_the_highest_scores(scores: dict[int, float], room: int) -> None:
    kept = apply_cap(scores, scores, room)
    assert kept == sorted(kept)
    assert len(kept) == min(max(room, 0), len(scores))
    dropped = set(scores) - set(kept)
    for k in kept:
        for d in dropped:
            assert (scores[k], -k) > (scores[d], -d), (k, d)


def _stats(graph_ids: list[int], values: list[float]) -> GroupStats:
    return GroupStats(np.array(graph_ids, dtype=np.int64), np.array(values),
                      np.ones(len(values)))


@settings(max_examples=60)
@given(spec=dag_specs(max_groups=10, max_width=3), headroom=st.integers(0, 4),
       seed=st.integers(0, 2**16), kind=st.sampled_from(["depth", "width", "mixed"]),
       cooldown=st.integers(0, 8), every=st.integers(1, 3))
def test_policy_never_exceeds_the_cap_and_respects_cooldown(
    spec: DagSpec, headroom: int, seed: int, kind: str, cooldown: int, every: int
) -> None:
    graph = spec.build(max_groups=len(spec.widths) + headroom)
    params = ParamStore.initialize(graph, np.random.default_rng(seed))
    policy = GrowthPolicy(threshold=0.5, every=every, cooldown=cooldown, kind=kind)
    rng = np.random.default_rng(seed)
    cool_until: dict[int, int] = {}
    for step in range(24):
        ids = graph.group_ids()
        values = rng.choice([0.1, 1.0, 2.0], size=len(ids)).tolist()
        policy.observe(_stats(ids, values))
        proposed = policy.propose(graph, step, rng)
        if (step + 1) % every:
            assert proposed == []
            continue
        dups = [m for m in proposed if isinstance(m, DuplicateDepth | DuplicateWidth)]
        assert len(dups) <= graph.max_groups - len(graph)
        scores = policy.criterion.scores()
        for m in dups:
            assert cool_until.get(m.group, -1) <= step, f"g{m.group} proposed in cooldown"
            assert scores[m.group] > 0.5
            assert kind == "mixed" or isinstance(m, DuplicateDepth) == (kind == "depth")
        # one group per run: no two proposed groups are joined by an edge
        picked = {m.group for m in dups}
        assert not any(p in picked for g in picked for p in graph.preds(g))
        report = apply_mutations(graph, params, proposed)
        policy.notify(report, step)
        for m, new in report.applied:
            for g in (m.group, new):
                cool_until[g] = step + 1 + cooldown
        assert len(graph) <= graph.max_groups


def test_policy_at_the_cap_proposes_the_highest_scores() -> None:
    spec = DagSpec(2, 2, (4, 4, 4, 4), ((-1,), (-1,), (-1,), (-1,)))  # four parallel groups
    graph = spec.build(max_groups=6)
    policy = GrowthPolicy(threshold=0.5, every=1, cooldown=0, kind="depth")
    policy.observe(_stats([0, 1, 2, 3], [0.9, 3.0, 0.1, 2.0]))
    proposed = policy.propose(graph, 0, np.random.default_rng(0))
    assert proposed == [DuplicateDepth(1), DuplicateDepth(3)]


def test_policy_cooldown_blocks_exactly_cooldown_steps() -> None:
    spec = DagSpec(2, 2, (4,), ((-1,),))
    graph = spec.build()
    params = ParamStore.initialize(graph, np.random.default_rng(0))
    policy = GrowthPolicy(threshold=0.5, every=1, cooldown=3, kind="width")
    rng = np.random.default_rng(0)
    policy.observe(_stats([0], [1.0]))
    (m,) = policy.propose(graph, 0, rng)
    policy.notify(apply_mutations(graph, params, [m]), 0)
    proposals = []
    for step in range(1, 6):
        policy.observe(_stats([0, 1], [1.0, 1.0]))
        proposals.append(policy.propose(graph, step, rng))
    assert proposals[:3] == [[], [], []]  # steps 1..3 in cooldown
    assert proposals[3] != []


def test_policy_prunes_dead_groups_but_never_the_whole_network() -> None:
    spec = DagSpec(2, 2, (4, 4), ((-1,), (-1,)))
    graph = spec.build()
    policy = GrowthPolicy(threshold=10.0, every=1, prune_below=0.01)
    policy.observe(GroupStats(np.array([0, 1]), np.zeros(2), np.zeros(2)))
    assert policy.propose(graph, 0, np.random.default_rng(0)) == [Prune(0)]
