"""Anomaly simulation (paper §3.1, Fig. 3, eq. (1)-(2)), one concept per module, read in this order:

    simulation_config.py  SimulationConfig: every parameter of the steps below (the ``simulation:`` schema)
    sampling.py    random draws from one torch.Generator (same seed -> same anomalies, CPU or CUDA)
    perlin.py      Perlin noise P and its mask M_P = P > T
    foreground.py  foreground masks M_I (binarise + opening/closing, per-category presets)
    masks.py       step 1 of Fig. 3: M = M_P ⊙ M_I, redrawn when empty
    pixels.py      noise images as pixel look-ups (mirrors, quarter turns as index arithmetic)
    textures.py    the texture source: DTD images (textural anomalies)
    structure.py   the structure source: colour jitter, mirror/turn, 4×8 tile shuffle (structural anomalies)
    simulator.py   step 3, eq. (1)-(2), and AnomalySimulator, which runs the three steps on a batch

Examples:
    >>> from memseg.simulation import AnomalySimulator
    >>> sim = AnomalySimulator.for_category("weave", size=(64, 64))  # doctest: +SKIP
"""

from memseg.simulation.foreground import (
    FOREGROUND_PRESETS,
    ForegroundConfig,
    foreground_mask,
    foreground_preset,
)
from memseg.simulation.perlin import perlin_mask, perlin_noise
from memseg.simulation.pixels import (
    gather_pixels,
    mirror_rotate_index,
    random_mirror_rotate,
)
from memseg.simulation.simulation_config import SimulationConfig
from memseg.simulation.simulator import (
    NO_DTD_WARNING,
    SOURCES,
    AnomalySimulator,
    SimulationResult,
    composite,
)
from memseg.simulation.structure import (
    colour_jitter_matrix,
    shuffle_tiles,
    structure_index,
    structure_source,
)
from memseg.simulation.textures import find_texture_files, load_textures

__all__ = [
    "FOREGROUND_PRESETS", "NO_DTD_WARNING", "SOURCES", "AnomalySimulator", "ForegroundConfig", "SimulationConfig",
    "SimulationResult", "colour_jitter_matrix", "composite", "find_texture_files", "foreground_mask",
    "foreground_preset", "gather_pixels", "load_textures", "mirror_rotate_index", "perlin_mask", "perlin_noise",
    "random_mirror_rotate", "shuffle_tiles", "structure_index", "structure_source",
]
