"""The kit's faces: the ``memseg`` console script, the demo settings and the Voila dashboard."""
