"""The one compiled piece: the weight-only int8 CPU kernel (src/dscoder/models/_int8mm.c). Everything else is in
pyproject.toml. `optional=True`: without a C compiler the package still installs and int8 uses torch's kernel."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dscoder.models._int8mm", ["src/dscoder/models/_int8mm.c"],
                             extra_compile_args=["-O3", "-std=c11"], optional=True)])
