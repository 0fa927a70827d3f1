"""The compiled inner loops: the cap reads' (``engine/caps/_count.pyx``) and the decoder's
candidate rows (``engine/rpc/_rows.pyx``); everything else about the package is in
pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("engine.caps._count", ["engine/caps/_count.pyx"]),
            Extension("engine.rpc._rows", ["engine/rpc/_rows.pyx"]),
        ],
        compiler_directives={"language_level": 3},
    )
)
