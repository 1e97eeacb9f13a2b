"""Helpers behind the teaching notebooks (``notebooks/01`` to ``06``): the notebooks hold the
narrative and call these functions."""
