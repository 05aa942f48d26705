"""CT Enhance models: geometry-exact CT I/O, scanner physics, metrics, networks, inference and training.

Sub-packages each do one job: ``io`` (volumes and their geometry on disk), ``physics`` (how scanners
blur), ``metrics`` (the one evaluator), ``nets`` (networks only), ``data`` (training data),
``training`` (the one trainer and its tasks), ``inference`` (whole-volume pipelines and shipped
models), ``cli`` (thin console scripts over the library).
"""
from __future__ import annotations

__version__ = "0.1.0"
