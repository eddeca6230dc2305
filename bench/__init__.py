"""koe's benchmark: `python -m bench` (see __main__.py)."""
