"""Bridges to the runtimes people deploy with. Today: llama.cpp, through `llama-cpp-python`.

The only package that imports a runtime's binding. Everything here takes and returns plain data
(paths, numpy arrays, records), so the rest of superweight never sees the binding's types.
"""
