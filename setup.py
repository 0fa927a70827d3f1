"""The compiled inner loop of the cap reads (``engine/caps/_count.pyx``); everything else about
the package is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("engine.caps._count", ["engine/caps/_count.pyx"])],
        compiler_directives={"language_level": 3},
    )
)
