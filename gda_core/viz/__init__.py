"""Figures (plain functions returning plotly figures) and the 2-D embeddings they draw."""
