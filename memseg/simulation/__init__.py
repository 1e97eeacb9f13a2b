"""Anomaly simulation (paper §3.1, Fig. 3, eq. 1-2): Perlin masks, foreground masks, texture and
structure sources, and the composite that pastes them onto normal images.

Examples:
    >>> from memseg.simulation import AnomalySimulator
    >>> sim = AnomalySimulator.for_category("weave", size=(64, 64))  # doctest: +SKIP
"""

from memseg.simulation.foreground import FOREGROUND_PRESETS, ForegroundConfig, foreground_mask, foreground_preset
from memseg.simulation.perlin import perlin_mask, perlin_noise
from memseg.simulation.simulator import AnomalySimulator, SimulationConfig, SimulationResult

__all__ = [
    "FOREGROUND_PRESETS", "AnomalySimulator", "ForegroundConfig", "SimulationConfig", "SimulationResult",
    "foreground_mask", "foreground_preset", "perlin_mask", "perlin_noise",
]
