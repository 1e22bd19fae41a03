"""Infrastructure both halves may use: atomic files, paths, the registry, downloads, stable hashes.

This is the one part of ``iceb`` that ``editors`` may import (see ``design.md``): nothing here knows the
benchmark, its tasks, metrics or editors.
"""
