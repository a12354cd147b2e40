"""Figures for people: PNG plots (matplotlib, headless Agg backend)."""
