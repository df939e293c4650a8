"""Rendering of records: PNG images, image grids, HTML reports, JSON summaries."""
