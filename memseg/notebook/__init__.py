"""Helpers behind the teaching notebooks (``notebooks/01`` to ``06``): the notebooks hold the narrative and
call these functions. One module per notebook topic:

    settings          setup() -> NotebookSettings (the parameters cell + MEMSEG_* overrides)
    data              the notebook's splits, images, memory images, simulator
    quick             quick_model (built by memseg.engine.cached_run.cached_training, as the demo model)
    figures           projector style, image panels and grids, HTML tables, saving figures for review
    simulation_views  01: Perlin noise, foreground masks, Fig. 3 step by step, SimulationPanel, gallery
    stages, model_views  02: stage table, parameters and FLOPs per stage (Fig. 2), DI* (eq. 3-4)
    training_views    03: LiveLossPlot, metrics, test predictions
    ablations         03: Table 5 runs, their plot and the committed multi-seed table
    tsne              04: bottleneck features, t-SNE of normal / simulated / real anomalies (Fig. 6)
    attention         05: spatial attention maps M3 -> M2 -> M1 (eq. 5-7, Fig. 9), AttentionBrowser
    baselines         06: MemSeg, DRAEM and MMR configs with one budget (also benchmarks/compare_models.py)
"""
