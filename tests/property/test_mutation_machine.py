"""Random sequences of mutations and training steps keep every invariant.

A :class:`RuleBasedStateMachine` queues duplicate-depth / duplicate-width / prune / connect /
disconnect mutations (valid ones and ones that must be refused), applies the queue as one
batch, and runs float64 training steps in between. After every step: ``graph.validate()``,
``params.validate(graph)``, the group cap, and ids unique and never reused (every id ever
created is tracked). A refused batch must leave graph and parameters bit-identical.

A batch is checked incrementally (``NetworkGraph._validate_batch`` and
``params.validate(graph, changed=…)``), so the machine also corrupts batches on purpose —
the queued mutations, then one raw graph change that breaks an invariant (or, sometimes,
keeps every one) — and asserts that the incremental checks refuse exactly when the full
ones do, and that a refused batch rolls back bit for bit. The depths the batch check repairs
and the level arrays built from them must equal ones computed from scratch. The flow order
(kept by insertion through batches) must stay a topological order of exactly the groups;
some stretches read only it, so depth seeds pile up over several batches before a read
repairs them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from helpers_network import DagSpec, assert_unchanged, dag_specs, random_params, snapshot
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamdag.backends.reference import ReferenceBackend
from streamdag.errors import (
    CapacityError,
    CycleError,
    GraphError,
    InvariantError,
    MutationError,
    OrphanError,
    StreamDagError,
    UnknownGroupError,
)
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.mutation import (
    Connect,
    Disconnect,
    DuplicateDepth,
    DuplicateWidth,
    Mutation,
    MutationQueue,
    Prune,
    _apply_one,
)

REFUSAL_TYPES = (CapacityError, CycleError, GraphError, MutationError, OrphanError,
                 UnknownGroupError)
CORRUPTIONS = ("cycle", "self", "no preds", "twice", "output", "orphaned sink", "over cap",
               "reorder", "extra input")


def reference_depths(graph: NetworkGraph) -> dict[int, int]:
    """Longest-path depths straight from the definition (recursive; the graphs are small)."""
    d = {INPUT: 0}

    def depth(n: int) -> int:
        if n not in d:
            d[n] = 1 + max(depth(p) for p in graph.preds(n))
        return d[n]

    for g in graph.group_ids():
        depth(g)
    d[OUTPUT] = 1 + max(d[p] for p in graph.output.preds)
    return d


def refuses(check: Callable[[], object]) -> bool:
    try:
        check()
    except InvariantError:
        return True
    return False


def descendants(graph: NetworkGraph, g: int) -> list[int]:
    seen, stack = set(), [g]
    while stack:
        for s in graph.succs(stack.pop()):
            if s != OUTPUT and s not in seen:
                seen.add(s)
                stack.append(s)
    return sorted(seen)


class MutationMachine(RuleBasedStateMachine):
    @initialize(spec=dag_specs(max_groups=5, max_width=6, max_fan_in=3),
                headroom=st.integers(0, 6), seed=st.integers(0, 2**16))
    def build(self, spec: DagSpec, headroom: int, seed: int) -> None:
        self.graph = spec.build(max_groups=len(spec.widths) + headroom)
        self.params = random_params(self.graph, seed, momentum=True)
        self.rng = np.random.default_rng(seed)
        self.queue = MutationQueue()
        self.backend = ReferenceBackend(dtype=np.float64)
        self.ever: set[int] = set(self.graph.group_ids())  # every id ever created
        self.removed: set[int] = set()
        self.step = 0
        self.applied = self.refused = 0
        self.read_depths = True  # else the invariants read the flow order only

    @rule()
    def toggle_depth_reads(self) -> None:
        self.read_depths = not self.read_depths

    # ------------------------------------------------------------------ choosing ids
    def _group(self, data: st.DataObject) -> int:
        """Usually a live group; sometimes a removed or never-created id."""
        live = self.graph.group_ids()
        bogus = [self.graph.next_id + 3, *sorted(self.removed)[-2:]]
        return data.draw(st.one_of(st.sampled_from(live), st.sampled_from(bogus))
                         if data.draw(st.integers(0, 9)) == 0 else st.sampled_from(live))

    def _source(self, data: st.DataObject) -> int:
        return INPUT if data.draw(st.integers(0, 4)) == 0 else self._group(data)

    # ------------------------------------------------------------------ queueing
    @rule(data=st.data())
    def queue_depth(self, data: st.DataObject) -> None:
        self.queue.push(DuplicateDepth(self._group(data)))

    @rule(data=st.data())
    def queue_width(self, data: st.DataObject) -> None:
        self.queue.push(DuplicateWidth(self._group(data)))

    @rule(data=st.data())
    def queue_prune(self, data: st.DataObject) -> None:
        self.queue.push(Prune(self._group(data)))

    @rule(data=st.data())
    def queue_connect(self, data: st.DataObject) -> None:
        self.queue.push(Connect(self._source(data), self._group(data)))

    @rule(data=st.data())
    def queue_disconnect(self, data: st.DataObject) -> None:
        dst = self._group(data)
        if dst in self.graph and data.draw(st.booleans()):
            src = data.draw(st.sampled_from(self.graph.preds(dst)))  # an existing edge
        else:
            src = self._source(data)
        self.queue.push(Disconnect(src, dst))

    # ------------------------------------------------------------------ applying / training
    @precondition(lambda self: len(self.queue) > 0)
    @rule(noise=st.sampled_from([0.0, 0.05]))
    def apply(self, noise: float) -> None:
        batch: list[Mutation] = list(self.queue)
        before = snapshot(self.graph, self.params)
        try:
            report = self.queue.apply(self.graph, self.params, step=self.step, rng=self.rng,
                                      noise=noise)
        except StreamDagError as exc:
            assert isinstance(exc, REFUSAL_TYPES), f"untyped refusal {exc!r}"
            assert "mutation #" in str(exc) or "cap" in str(exc), str(exc)
            assert_unchanged(before, self.graph, self.params)
            self.refused += 1
        else:
            assert [m for m, _ in report.applied] == batch
            created = report.created
            assert len(set(created)) == len(created)
            assert not set(created) & self.ever, f"ids reused: {set(created) & self.ever}"
            self.ever |= set(created)
            self.removed |= set(report.removed)
            self.applied += 1
        assert len(self.queue) == 0  # applied or refused, the batch is gone

    @rule(kind=st.sampled_from(CORRUPTIONS), data=st.data())
    def apply_corrupted(self, kind: str, data: st.DataObject) -> None:
        """The queued mutations plus one raw change, checked both ways inside the batch."""
        batch: list[Mutation] = list(self.queue)
        self.queue.clear()
        g, p = self.graph, self.params
        before = snapshot(g, p)
        g._begin()
        p.begin()
        try:
            for m in batch:
                _apply_one(g, p, m, step=self.step, rng=self.rng, noise=0.0)
            self._corrupt(kind, data)
        except StreamDagError:  # a mutation or the raw change itself was refused
            g._rollback()
            p.rollback()
            assert_unchanged(before, g, p)
            return
        full = refuses(g.validate)
        changed: list[set[int]] = []
        incremental = refuses(lambda: changed.append(g._validate_batch()))
        assert incremental == full, f"{kind}: incremental {incremental}, full {full}"
        params_full = full or refuses(lambda: p.validate(g))
        if not full:
            assert refuses(lambda: p.validate(g, changed=changed[0])) == params_full, kind
        event(f"corrupted batch ({kind}): {'refused' if params_full else 'accepted'}")
        if params_full:
            g._rollback()
            p.rollback()
            assert_unchanged(before, g, p)
            self.refused += 1
        else:
            g._commit()
            p.commit()
            self.ever |= set(g.group_ids())
            self.applied += 1

    def _corrupt(self, kind: str, data: st.DataObject) -> None:
        g = self.graph
        a = data.draw(st.sampled_from(g.group_ids()))
        preds = list(g.preds(a))
        if kind == "cycle":
            below = descendants(g, a)
            g._set_preds(a, [*preds, data.draw(st.sampled_from(below))] if below else [a])
        elif kind == "self":
            g._set_preds(a, [*preds, a])
        elif kind == "no preds":
            g._set_preds(a, [])
        elif kind == "twice":
            g._set_preds(a, [*preds, preds[0]])
        elif kind == "output":
            out = list(g.output.preds)
            g._set_preds(OUTPUT, out[:-1] if len(out) > 1 else [*out, a])
        elif kind == "orphaned sink":  # removed, but the output still reads it
            sink = data.draw(st.sampled_from(g.output.preds))
            g._set_preds(sink, [])
            g._remove_group(sink)
        elif kind == "over cap":  # a new sink the output does not read, maybe past the cap
            g._add_group(2, [INPUT])
        elif kind == "reorder":  # keeps every invariant (and every weight shape)
            g._set_preds(a, preds[::-1])
        elif kind == "extra input" and INPUT not in preds:  # valid, but W_a lacks columns
            g._set_preds(a, [*preds, INPUT])

    @rule(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
    def train_step(self, seed: int, batch: int) -> None:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, self.graph.n_inputs))
        y = rng.integers(0, self.graph.n_classes, batch)
        result = self.backend.step(self.graph, self.params, x, y, lr=0.05, momentum=0.9)
        assert np.isfinite(result.loss)
        assert result.stats.group_ids.tolist() == self.graph.group_ids()
        self.step += 1

    @rule(data=st.data())
    def lower_or_raise_cap(self, data: st.DataObject) -> None:
        n = len(self.graph)
        cap = data.draw(st.integers(max(1, n - 2), n + 4))
        old = self.graph.max_groups
        if cap < n:
            try:
                self.graph.set_max_groups(cap)
            except CapacityError as exc:
                assert str(n) in str(exc)
            else:
                raise AssertionError(f"cap {cap} below {n} groups accepted")
            assert self.graph.max_groups == old
        else:
            self.graph.set_max_groups(cap)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def invariants_hold(self) -> None:
        g = self.graph
        g.validate()
        self.params.validate(g)
        ids = g.group_ids()
        assert len(ids) == len(set(ids))
        assert set(ids) <= self.ever
        assert not set(ids) & self.removed, "a removed id came back"
        assert g.next_id > max(self.ever)
        assert g.max_groups is None or len(g) <= g.max_groups
        assert self.params.nodes() == sorted([*ids, -2])

    @invariant()
    def caches_match_a_fresh_computation(self) -> None:
        g = self.graph
        d = reference_depths(g)
        flow = g.flow_order().tolist()
        assert sorted(flow) == g.group_ids()
        at = {x: k for k, x in enumerate(flow)}
        assert all(at[p] < at[x] for x in flow for p in g.preds(x) if p != INPUT)
        bound = g.depth_bound()
        assert bound is None or bound <= d[OUTPUT]
        if not self.read_depths:
            return
        assert g.depths() == d
        assert g.depth_bound() == d[OUTPUT]
        levels = g.levels()
        assert [x for lv in levels for x in lv] == sorted(g.group_ids(),
                                                          key=lambda x: (d[x], x))
        assert [len(lv) for lv in levels] == [
            sum(1 for x in g.group_ids() if d[x] == k) for k in range(1, len(levels) + 1)]
        arrays = g.level_arrays()
        ids = arrays.ids.tolist()
        assert arrays.width.tolist() == [g.width(x) for x in ids]
        assert arrays.n_preds.tolist() == [len(g.preds(x)) for x in ids]
        assert arrays.preds.tolist() == [q for x in ids for q in g.preds(x)]


MutationMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None)
TestMutationMachine = MutationMachine.TestCase
