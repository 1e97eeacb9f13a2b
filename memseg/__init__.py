"""memseg: MemSeg (Yang et al., arXiv 2205.00908) for learning, reproducing and demoing.

Rooms (anomalib style):
  memseg.simulation.simulator      anomaly simulation (paper §3.1, Fig. 3, eq. 1-2)
  memseg.simulation.perlin          batched, seedable Perlin noise in torch
  memseg.simulation.foreground      foreground masks M_I (binarise + opening/closing)
  memseg.data            datasets (MVTec AD, BTAD, folder) and the procedural synthetic dataset
  memseg.models          the MemSeg network (paper §3.2-3.3, Fig. 2 and 4)
  memseg.models.memseg.loss          L1 + focal (paper §3.4, eq. 8-10)
  memseg.engine.training        training loop, checkpoints, resume
  memseg.engine.metrics         image/pixel AUROC, AUPRO@0.3, F1-max
  memseg.engine.evaluation      honest evaluation of a checkpoint on a test split
  memseg.engine.inference       Predictor: checkpoint -> scores and anomaly maps
  memseg.viz             plotting helpers for notebooks and the dashboard
"""

__version__ = "0.1.0"
