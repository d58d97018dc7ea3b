"""The package version, in a module of its own so any module may read it without
importing the whole package (``gpubackprop/__init__.py`` imports everything)."""

__version__ = "0.1.0"
