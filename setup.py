"""The optional C part of vcom; everything else is in pyproject.toml.

vcom._speedups holds two loops of the RFC 2217 data path.  It is built when a C compiler and Python's
headers are present; otherwise the install goes on without it (optional) and vcom.rfc2217 uses its own
Python, with the same results.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        # An interpreter built with a run path (pyenv) links every extension with it: the module would
        # name the build machine's interpreter, and needs no library of it.
        linker = getattr(self.compiler, "linker_so", None)
        if linker is not None:
            self.compiler.linker_so = [arg for arg in linker if not arg.startswith("-Wl,-rpath")]
        super().build_extensions()


setup(
    # -g0: debug information would name the build directory.
    ext_modules=[Extension("vcom._speedups", ["vcom/_speedups.c"], optional=True, extra_compile_args=["-g0"])],
    cmdclass={"build_ext": BuildExt},
)
