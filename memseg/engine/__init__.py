"""Engine: what is done *with* a model: training, checkpoints, scoring, evaluation, metrics,
inference (``Predictor``) and export. Knows models and data; knows nothing of the CLI or widgets."""
