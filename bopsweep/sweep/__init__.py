"""Sweeps: YAML specs expanded into trials, run by Ray Tune, tracked in MLflow.

``spec`` turns a file into a validated :class:`~bopsweep.sweep.spec.SweepSpec` and
its trials; ``tuner`` builds the Ray Tune run; ``trainable`` is one trial;
``tracking`` holds the MLflow side (parent and child runs).
"""
