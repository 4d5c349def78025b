"""Benchmarks of mdp-hub: training step, memory, data pipeline, hub loading, GPU-hour projection.

``python -m benchmarks [--quick]`` runs them all and writes docs/BENCHMARKS.md; each part also has its own CLI
(benchmarks/train_step.py, benchmarks/data_pipeline.py, benchmarks/hub_load.py).
"""
