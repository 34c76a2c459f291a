"""CollapseMonitor: embedding_std values in, at most one warning per collapse episode out."""

import math

import pytest

from ssl_jax.evaluate.health import CollapseMonitor

DIM = 256  # healthy std ~ 1/sqrt(256) = 0.0625; the threshold is a tenth of that, 0.00625
HEALTHY, LOW = 1 / math.sqrt(DIM), 0.001


def feed(monitor, stds, start=0):
    """{step: warning} for the steps that warned, feeding stds at consecutive steps."""
    warnings = {}
    for step, std in enumerate(stds, start):
        warning = monitor.update(step, std)
        if warning is not None:
            warnings[step] = warning
    return warnings


def test_threshold_is_a_tenth_of_the_healthy_std():
    assert CollapseMonitor(DIM).threshold == pytest.approx(0.00625)
    assert CollapseMonitor(100).threshold == pytest.approx(0.01)


def test_healthy_and_noisy_runs_never_warn():
    monitor = CollapseMonitor(DIM)
    assert feed(monitor, [HEALTHY] * 200) == {}
    # Dips shorter than the window, however many, are noise.
    assert feed(monitor, ([LOW] * 19 + [HEALTHY]) * 10, start=200) == {}


def test_warns_once_after_window_consecutive_low_steps():
    monitor = CollapseMonitor(DIM, window=20)
    warnings = feed(monitor, [HEALTHY] * 5 + [LOW] * 100)  # low from step 5
    assert list(warnings) == [24]  # steps 5..24 are the 20th low step; then silence
    message = warnings[24]
    assert "step 24" in message and "since step 5" in message
    assert "collapse" in message and "1.00e-03" in message  # the std it saw
    assert "6.25e-03" in message  # the threshold 0.1/sqrt(D)


def test_the_threshold_itself_is_healthy():
    monitor = CollapseMonitor(100, window=3)  # threshold 0.01
    assert feed(monitor, [0.01] * 10) == {}
    assert list(feed(monitor, [0.0099] * 3, start=10)) == [12]


def test_recovery_resets_and_a_new_episode_warns_again():
    monitor = CollapseMonitor(DIM, window=20)
    stds = [LOW] * 30 + [HEALTHY] + [LOW] * 19 + [HEALTHY] * 5 + [LOW] * 25
    # Episode 1: steps 0..29, warns at 19. Step 30 recovers. Steps 31..49: 19 low, no warning.
    # Steps 50..54 healthy. Episode 2: from step 55, warns at its 20th low step, 74.
    warnings = feed(monitor, stds)
    assert list(warnings) == [19, 74]
    assert "since step 55" in warnings[74]


def test_counts_steps_not_calls():
    # The training loop may check one step more than once (at a log and at a checkpoint): a
    # repeated step neither adds to the count nor warns twice.
    monitor = CollapseMonitor(DIM, window=5)
    for step in range(4):
        assert monitor.update(step, LOW) is None
        assert monitor.update(step, LOW) is None
    assert "step 4" in monitor.update(4, LOW)
    assert monitor.update(4, LOW) is None
    # Steps numbered from a resumed run: the window is measured in steps.
    resumed = CollapseMonitor(DIM, window=5)
    assert list(feed(resumed, [LOW] * 10, start=1000)) == [1004]


def test_window_of_one_warns_on_the_first_low_step():
    monitor = CollapseMonitor(DIM, window=1)
    assert list(feed(monitor, [HEALTHY, LOW, LOW, HEALTHY, LOW])) == [1, 4]
