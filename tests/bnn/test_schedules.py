"""Schedules of gamma, threshold and lr, evaluated at known optimizer steps."""

from __future__ import annotations

import pickle

import pytest

from bopsweep.bnn.schedules import Schedule, as_schedule


def test_constant():
    schedule = Schedule("constant", 0.25)
    assert [schedule(step) for step in (0, 1, 10**6)] == [0.25, 0.25, 0.25]


def test_exponential_staircase():
    # Section 5.2: gamma 1e-4, x0.1 every 100 epochs (here: 100 steps).
    schedule = Schedule("exponential", 1e-4, steps=100, factor=0.1)
    assert schedule(0) == 1e-4
    assert schedule(99) == 1e-4
    assert schedule(100) == pytest.approx(1e-5, rel=1e-12)
    assert schedule(199) == pytest.approx(1e-5, rel=1e-12)
    assert schedule(200) == pytest.approx(1e-6, rel=1e-12)
    assert schedule(499) == pytest.approx(1e-8, rel=1e-12)


def test_exponential_exact_halving():
    schedule = Schedule("exponential", 1.0, steps=3, factor=0.5)
    assert [schedule(step) for step in range(10)] == [
        1,
        1,
        1,
        0.5,
        0.5,
        0.5,
        0.25,
        0.25,
        0.25,
        0.125,
    ]


def test_linear_including_past_the_end():
    # Section 5.3: gamma 1e-4 -> 1e-6 over all steps.
    schedule = Schedule("linear", 1e-4, end=1e-6, steps=100)
    assert schedule(0) == 1e-4
    assert schedule(50) == pytest.approx(5.05e-5, rel=1e-12)
    assert schedule(99) == pytest.approx(1e-4 - 99 * 9.9e-7, rel=1e-12)
    assert schedule(100) == pytest.approx(1e-6, rel=1e-12)
    assert schedule(101) == pytest.approx(1e-6, rel=1e-12)
    assert schedule(10**6) == pytest.approx(1e-6, rel=1e-12)


def test_linear_exact_values():
    schedule = Schedule("linear", 3.0, end=-1.0, steps=4)
    assert [schedule(step) for step in range(7)] == [3.0, 2.0, 1.0, 0.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="cosine", start=1.0), "unknown schedule kind 'cosine'"),
        (dict(kind="constant", start=float("nan")), "must be finite"),
        (dict(kind="exponential", start=1.0, steps=10), "needs 'factor' and 'steps'"),
        (dict(kind="exponential", start=1.0, factor=0.1), "needs 'factor' and 'steps'"),
        (dict(kind="exponential", start=1.0, steps=0, factor=0.1), "steps >= 1 and factor > 0"),
        (dict(kind="exponential", start=1.0, steps=5, factor=0.0), "steps >= 1 and factor > 0"),
        (dict(kind="linear", start=1.0, steps=10), "needs 'end' and 'steps'"),
        (dict(kind="linear", start=1.0, end=0.0), "needs 'end' and 'steps'"),
        (dict(kind="linear", start=1.0, end=0.0, steps=0), "steps >= 1"),
    ],
)
def test_invalid_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule("constant", 0.5),
        Schedule("exponential", 1e-4, steps=7, factor=0.1),
        Schedule("linear", 2.5e-3, end=5e-6, steps=11),
    ],
)
def test_dict_round_trip(schedule):
    data = schedule.to_dict()
    assert all(value is not None for value in data.values())
    # A plain dict of builtins: safe for weights_only checkpoints.
    assert pickle.loads(pickle.dumps(data)) == data
    assert Schedule.from_dict(data) == schedule
    assert as_schedule(data) == schedule


def test_as_schedule():
    assert as_schedule(0.5) == Schedule("constant", 0.5)
    assert as_schedule(3) == Schedule("constant", 3.0)
    schedule = Schedule("linear", 1.0, end=0.0, steps=2)
    assert as_schedule(schedule) is schedule


def test_schedules_are_frozen():
    schedule = Schedule("constant", 0.5)
    with pytest.raises(AttributeError):
        schedule.start = 1.0
