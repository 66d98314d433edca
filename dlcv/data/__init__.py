"""Data in the course's on-disk layout: images.py (decode, validate, cache), faces.py and digits.py (readers),
prepare.py (builds the layout), loaders.py (batches and the two range conversions)."""
