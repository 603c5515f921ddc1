"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

`optional=True`: where no C compiler is available (a slim container image) the build goes on without it and
exporter/scan.py's pure-Python fast path does the same, with the same results.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("exporter._scan", ["exporter/_scan.c"], optional=True)])
