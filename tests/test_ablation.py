"""Specification of the ablation (issue 13): the arms as data, their training command, and eval.ablation.

- neighbouring arms differ in exactly the documented factor (table column and config fields), and every
  trained arm shares the stage-3 settings; B is A's weights sampled 4 naive Euler steps (d = 0);
- `python -m mf.train arm --arm all` trains every arm from one init with equal steps and batch and ships
  each as float16 safetensors + config + arm.json;
- eval.ablation: JSON shape, bootstrap intervals (contain the mean, shrink with N), missing arms are
  reported, and the markdown table is generated from the JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from mf.sampler import make_schedule
from mf.train.arms import ARMS, FACTORS, ORDER, changed_columns, get_arm

# config fields each neighbour pair changes (everything else, e.g. max_history / rollout steps / cfg, is shared)
CONFIG_FIELDS = {("A", "B"): set(), ("B", "C"): {"w_shortcut"}, ("C", "D"): {"history"},
                 ("D", "E"): {"w_fm", "w_shortcut", "w_dmd", "teacher"},
                 ("E", "F"): {"w_fm", "w_shortcut", "w_dmd", "teacher"}}


def _config_diff(a, b) -> set[str]:
    da, db = asdict(a.config()), asdict(b.config())
    return {k for k in da if da[k] != db[k]}


def test_each_arm_differs_from_its_neighbour_in_exactly_the_documented_factor():
    assert ORDER == ("A", "B", "C", "D", "E", "F")
    for left, right in zip(ORDER, ORDER[1:]):
        a, b = ARMS[left], ARMS[right]
        assert changed_columns(a, b) == {FACTORS[(left, right)]}, (left, right)
        assert _config_diff(a, b) == CONFIG_FIELDS[(left, right)], (left, right)


def test_arm_configs_match_the_issue_table():
    a, c, d, e, f = (ARMS[k].config() for k in "ACDEF")
    assert a.history == c.history == "real" and d.history == e.history == f.history == "generated"
    assert (a.w_fm, a.w_shortcut, a.w_dmd) == (1.0, 0.0, 0.0)
    assert c.w_shortcut > 0 and c.w_dmd == 0 and d.w_dmd == 0
    assert (e.w_fm, e.w_shortcut, e.teacher) == (0.0, 0.0, "frozen") and e.w_dmd > 0
    assert min(f.w_fm, f.w_shortcut, f.w_dmd) > 0 and f.teacher == "online"
    assert [s for s, _ in ARMS["F"].sampling] == [4, 8, 50] and ARMS["A"].sampling == ((50, "multi"),)
    assert ARMS["B"].weights_of == "A" and all(ARMS[k].trained for k in "ACDEF")
    # B is naive: 4 Euler steps, the network told d = 0; C..F at 4 tell the network the jump
    assert set(make_schedule(4, mode=ARMS["B"].sampling[0][1]).model_d) == {0.0}
    assert all(x > 0 for x in make_schedule(4, mode=ARMS["C"].sampling[0][1]).model_d)
    # run-wide settings are applied to every arm alike
    assert {ARMS[k].config(max_history=3).max_history for k in ORDER} == {3}
    with pytest.raises(ValueError, match="unknown arm"):
        get_arm("G")


def test_the_sampler_tells_the_jump_only_to_arms_whose_objective_trains_a_few_step_mode():
    for arm in ARMS.values():
        for steps, mode in arm.sampling:
            assert mode == ("multi" if steps > 16 or arm.objective == "fm" else "few"), (arm.name, steps)
