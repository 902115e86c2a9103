"""An offline demo world: a built-in synthetic forget set and four tiny models trained on it.

- :mod:`hubaudit.demo.synth` generates the synthetic forget set shipped in
  ``hubaudit/forget/data/synthetic`` (``python -m hubaudit.demo.synth`` rewrites it identically).
- :func:`build_world` trains ``target``, ``unlearned``, ``retain_only`` and ``constructed`` models on it
  (a few minutes on a CPU; reused from the output folder afterwards).
"""

from .world import World, build_world, world_settings

__all__ = ["World", "build_world", "world_settings"]
