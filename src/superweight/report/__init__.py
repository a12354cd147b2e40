"""Everything a person sees: terminal tables (rich), markdown, PNG figures, progress on stderr.

The library returns plain results; the functions here present them, so the terminal, the markdown
file and the plots always agree. `tables` builds each result's tables once and draws them as rich
or markdown; `*_plots` draw the paper's figures; `progress` shows long runs; `output` writes files.
"""
