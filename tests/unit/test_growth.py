"""growth.py: the EMA criteria, policy arguments, and policy state for checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamdag.backends.base import GroupStats
from streamdag.errors import ConfigError
from streamdag.growth import GradStdCriterion, GrowthPolicy


def _stats(ids, std, act=None) -> GroupStats:
    return GroupStats(np.array(ids, dtype=np.int64), np.array(std, dtype=np.float64),
                      np.array(act if act is not None else [1.0] * len(ids)))


def test_ema_first_value_then_blend() -> None:
    c = GradStdCriterion(decay=0.75)
    c.update(_stats([0, 3], [1.0, 2.0]))
    assert c.scores() == {0: 1.0, 3: 2.0}
    c.update(_stats([0, 3, 5], [5.0, 2.0, 8.0]))
    assert c.scores() == {0: 0.75 * 1.0 + 0.25 * 5.0, 3: 2.0, 5: 8.0}
    c.forget([3, 99])
    assert set(c.scores()) == {0, 5}


def test_ema_state_round_trips_through_json() -> None:
    c = GradStdCriterion(decay=0.5)
    c.update(_stats([1, 2], [0.1, 1 / 3]))
    state = json.loads(json.dumps(c.state_dict()))
    d = GradStdCriterion()
    d.load_state_dict(state)
    assert d.scores() == c.scores() and d.decay == 0.5


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "sideways"}, "growth kind"),
    ({"depth_fraction": 1.5}, "depth_fraction"),
    ({"every": 0}, "every"),
    ({"cooldown": -1}, "cooldown"),
    ({"threshold": -0.1}, "threshold"),
])
def test_policy_argument_checks(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        GrowthPolicy(**kwargs)
    with pytest.raises(ConfigError, match="decay"):
        GradStdCriterion(decay=1.0)


def test_policy_only_acts_every_n_steps_and_below_threshold_nothing() -> None:
    from streamdag.graph import NetworkGraph

    g = NetworkGraph.chain(n_inputs=2, n_classes=2, widths=[3, 3])
    pol = GrowthPolicy(threshold=0.5, every=4, cooldown=0, kind="depth")
    rng = np.random.default_rng(0)
    pol.observe(_stats([0, 1], [1.0, 1.0]))
    assert [pol.propose(g, s, rng) for s in range(3)] == [[], [], []]
    assert len(pol.propose(g, 3, rng)) == 1  # (step + 1) % every == 0; g0 and g1 form one run
    pol2 = GrowthPolicy(threshold=0.5, every=1)
    pol2.observe(_stats([0, 1], [0.5, 0.2]))  # not above the threshold
    assert pol2.propose(g, 0, rng) == []


def test_policy_state_round_trip() -> None:
    from streamdag.graph import NetworkGraph
    from streamdag.mutation import DuplicateDepth, apply_mutations
    from streamdag.params import ParamStore

    g = NetworkGraph.chain(n_inputs=2, n_classes=2, widths=[3])
    p = ParamStore.initialize(g, np.random.default_rng(0))
    pol = GrowthPolicy(threshold=0.0, every=1, cooldown=5, prune_below=0.1)
    pol.observe(_stats([0], [1.0], [0.5]))
    pol.notify(apply_mutations(g, p, [DuplicateDepth(0)]), step=3)
    pol.observe(_stats([0, 1], [0.2, 0.3], [0.5, 0.5]))
    state = json.loads(json.dumps(pol.state_dict()))
    assert state["cool_until"] == [[0, 9], [1, 9]]
    other = GrowthPolicy(threshold=0.0, every=1, cooldown=5, prune_below=0.1)
    other.load_state_dict(state)
    assert other.state_dict() == pol.state_dict()
