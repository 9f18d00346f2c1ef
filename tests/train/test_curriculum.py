"""Curriculum task sampler (TMF Eq. 12-14) and the gradient-routing table (Eq. 9-11)."""

import json
import logging

import pytest

from llmrec.config import ConfigError, load_config
from llmrec.tmf.model import ADAPTOR_GROUPS
from llmrec.tmf.tasks import TASKS, TRAINABLE_BY_TASK, trainable_parts
from llmrec.train.curriculum import CurriculumConfig, CurriculumSampler

T1, T = 40, 100


def sampler(**overrides):
    return CurriculumSampler(CurriculumConfig(**{"t1": T1, "total": T, **overrides}))


# Hand-computed from Eq. 12 (p_m = tau / T for tau <= T1) and Eq. 13 (p_h = (tau - T1) / (T - T1)).
@pytest.mark.parametrize("step, easy, medium, hard", [
    (0, 1.0, 0.0, 0.0),
    (20, 0.8, 0.2, 0.0),      # T1 / 2
    (40, 0.6, 0.4, 0.0),      # T1: p_m = T1 / T = 0.4, not 1 (Eq. 12 divides by T)
    (41, 0.0, 59 / 60, 1 / 60),
    (70, 0.0, 0.5, 0.5),      # (70 - 40) / (100 - 40)
    (100, 0.0, 0.0, 1.0),     # T
    (250, 0.0, 0.0, 1.0),     # beyond T: clamped
])
def test_probabilities_follow_eq_12_and_13(step, easy, medium, hard):
    probs = sampler().probabilities(step)
    assert probs == pytest.approx({"easy": easy, "medium": medium, "hard": hard})


def test_probabilities_are_distributions_at_every_step():
    s = sampler()
    for step in range(0, 130):
        probs = s.probabilities(step)
        assert set(probs) == set(TASKS) and sum(probs.values()) == pytest.approx(1.0)
        assert min(probs.values()) >= 0.0 and max(probs.values()) <= 1.0
    with pytest.raises(ValueError, match="non-negative integer"):
        s.probabilities(-1)


def test_sample_is_deterministic_in_seed_and_step():
    first, second = sampler(seed=3), sampler(seed=3)
    steps = list(range(0, 120, 3))
    forward = [first.sample(step) for step in steps]
    backward = [second.sample(step) for step in reversed(steps)][::-1]  # call order does not matter
    assert forward == backward
    other_seed = [sampler(seed=4).sample(step) for step in steps]
    assert other_seed != forward
    assert first.sample(60, substep=1) == second.sample(60, substep=1)


def test_one_task_per_batch_by_default_and_per_sample_draws():
    batch_tasks = sampler().sample(70, n=16)
    assert len(batch_tasks) == 16 and len(set(batch_tasks)) == 1
    sample_tasks = sampler(per_sample=True).sample(70, n=64)
    assert set(sample_tasks) == {"medium", "hard"}


@pytest.mark.parametrize("step, task, expected", [(20, "medium", 0.2), (40, "medium", 0.4), (85, "hard", 0.75)])
def test_empirical_frequencies_match_probabilities(step, task, expected):
    per_sample = sampler(per_sample=True).sample(step, n=20000)
    assert per_sample.count(task) / 20000 == pytest.approx(expected, abs=0.015)
    per_batch = [sampler().sample(step, substep=k)[0] for k in range(4000)]
    assert per_batch.count(task) / 4000 == pytest.approx(expected, abs=0.03)


def test_schedule_endpoints():
    s = sampler(per_sample=True)
    assert set(s.sample(0, n=500)) == {"easy"}
    assert set(s.sample(T, n=500)) == {"hard"}
    assert set(s.sample(10 * T, n=500)) == {"hard"}
    assert "hard" not in s.sample(T1, n=2000)


@pytest.mark.parametrize("task", TASKS)
def test_fixed_task(task):
    s = sampler(fixed_task=task, per_sample=True)
    for step in (0, T1, 70, 5 * T):
        assert s.probabilities(step) == {t: float(t == task) for t in TASKS}
        assert set(s.sample(step, n=50)) == {task}


def test_state_dict_round_trip_and_mismatch(caplog):
    s = sampler(seed=7)
    for step in range(50):
        s.sample(step, n=4)
    state = json.loads(json.dumps(s.state_dict()))  # JSON-able, as trainer_state.json stores it
    assert sum(state["task_counts"].values()) == 200 and state["last_step"] == 49
    resumed = sampler(seed=7)
    resumed.load_state_dict(state)
    assert resumed.task_counts == s.task_counts and resumed.last_step == 49
    assert resumed.sample(50, n=4) == s.sample(50, n=4)
    with pytest.raises(ValueError, match=r"different settings for \['seed'\]"):
        sampler(seed=8).load_state_dict(state)
    with caplog.at_level(logging.WARNING, logger="llmrec.train.curriculum"):
        sampler(seed=8).load_state_dict(state, strict=False)
    assert "keeping the current settings" in caplog.text
    with pytest.raises(ValueError, match="missing key"):
        sampler().load_state_dict({"config": state["config"]})


def test_config_validation_and_yaml_loading(tmp_path):
    path = tmp_path / "curriculum.yaml"
    path.write_text("t1: 10\ntotal: 30\nper_sample: true\n", encoding="utf-8")
    cfg = load_config(CurriculumConfig, path, ["seed=5", "fixed_task=hard"])
    assert (cfg.t1, cfg.total, cfg.per_sample, cfg.seed, cfg.fixed_task) == (10, 30, True, 5, "hard")
    with pytest.raises(ConfigError, match="T1 < T"):
        CurriculumConfig(t1=30, total=30)
    with pytest.raises(ConfigError, match="fixed_task"):
        load_config(CurriculumConfig, path, ["fixed_task=expert"])
    with pytest.raises(ConfigError, match="missing required"):
        load_config(CurriculumConfig, None, ["t1=3"])


def test_routing_table_covers_the_models_parameter_groups():
    """Every task in the table and every name a group TMFModel trains: a misspelt or renamed group would
    silently train nothing, a new adaptor group missing from the hard task would never be trained (Eq. 11
    trains them all). What each task's gradient actually reaches is tested on a model in
    tests/tmf/test_tmf_model.py::test_gradient_reaches_exactly_the_task_parameters."""
    assert tuple(TRAINABLE_BY_TASK) == TASKS
    assert trainable_parts("hard") == {"lora", *ADAPTOR_GROUPS}
    assert trainable_parts("easy") < trainable_parts("medium") < trainable_parts("hard")
    with pytest.raises(ValueError, match="unknown task"):
        trainable_parts("expert")


# ---- two tasks: one linear stage (LLaRA's curriculum; the Table 3 ablation rows) -------------------------
@pytest.mark.parametrize("tasks", [["easy", "hard"], ["easy", "medium"], ["medium", "hard"]])
def test_two_tasks_are_one_linear_stage(tasks):
    s = sampler(tasks=tasks)
    first, second = tasks
    other = next(t for t in TASKS if t not in tasks)
    for step, p in ((0, 0.0), (25, 0.25), (40, 0.4), (80, 0.8), (100, 1.0), (300, 1.0)):
        probs = s.probabilities(step)
        assert probs[second] == pytest.approx(p) and probs[first] == pytest.approx(1 - p) and probs[other] == 0.0
    drawn = [s.sample(step)[0] for step in range(T)]
    assert set(drawn) == set(tasks)
    # the later half draws the second task more often than the earlier half (p rises linearly)
    assert drawn[T // 2:].count(second) > drawn[:T // 2].count(second)
    assert s.sample(T + 5) == [second]


@pytest.mark.parametrize("tasks", [["hard", "easy"], ["easy"], ["easy", "easy"], ["easy", "expert"]])
def test_task_lists_must_be_ordered_subsets(tasks):
    with pytest.raises(ConfigError, match="curriculum.tasks"):
        sampler(tasks=tasks)
