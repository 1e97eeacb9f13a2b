"""memseg: MemSeg (Yang et al., arXiv 2205.00908) for learning, reproducing and demoing.

One folder per part of the paper or face of the kit (docs/ARCHITECTURE.md draws the tree):

  memseg.simulation     anomaly simulation (paper §3.1, Fig. 3, eq. 1-2): Perlin and foreground masks,
                        texture and structure sources, the composite
  memseg.models         the networks: memseg/ (§3.2-3.4, Fig. 2; start at model.py), draem/, mmr/
  memseg.data           image IO, dataset layouts (MVTec AD, BTAD, folder), the synthetic dataset
  memseg.engine         training, checkpoints, scoring, evaluation, metrics, inference, export
  memseg.apps           the `memseg` command, the demo settings and the Voila dashboard
  memseg.notebook       the helpers behind notebooks 01-06
  memseg.config, .paths, .utils, .viz
                        sizes and config dataclasses, where data lives, devices and seeds, colour maps
"""

__version__ = "0.1.0"
