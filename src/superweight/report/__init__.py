"""Everything a person sees: terminal tables and sentences, PNG plots (matplotlib, headless Agg)."""
