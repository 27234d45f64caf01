"""When a trial checkpoints: after its last epoch, and in between by elapsed time or
every N epochs."""

from __future__ import annotations

import time

from bopsweep.sweep.trainable import CheckpointPolicy


def test_only_the_last_epoch_when_epochs_are_quick():
    policy = CheckpointPolicy(every=None, every_s=60.0)
    assert [policy.due(e, e == 5) for e in range(1, 6)] == [False] * 4 + [True]


def test_elapsed_time_and_epoch_count_trigger_checkpoints():
    policy = CheckpointPolicy(every=None, every_s=0.05)
    assert not policy.due(1, False)
    time.sleep(0.06)
    assert policy.due(2, False)
    policy.taken()
    assert not policy.due(3, False)
    every_two = CheckpointPolicy(every=2, every_s=None)
    assert [every_two.due(e, False) for e in range(1, 5)] == [False, True, False, True]
