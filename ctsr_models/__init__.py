"""CT Enhance models: geometry-exact CT I/O, scanner physics, metrics, networks, inference and training.

Sub-packages each do one job: ``io`` (volumes and their geometry on disk), ``physics`` (how scanners
blur), ``metrics`` (the one evaluator), ``cli`` (thin console scripts over the library).
"""
from __future__ import annotations

__version__ = "0.1.0"
