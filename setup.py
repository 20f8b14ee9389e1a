"""Build configuration beyond what pyproject.toml can say:

- the sitecustomize hook that loads the layer lives in sitecustomize_hook/ in the checkout
  and ships in the wheel as the package mirrord._hook, so that an installed mirrord can
  put it on an app's path;
- the native relay (mirrord/native/src/*.c) is compiled into the package by build_py.
  Without a C compiler the package still installs (the Python layer works on its own)
  and says why the relay is missing.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _native_build():
    # by path: importing the mirrord package needs its dependencies, not there yet
    spec = importlib.util.spec_from_file_location(
        "_mirrord_native_build", HERE / "mirrord/native/build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithRelay(build_py):
    def run(self):
        super().run()
        native = _native_build()
        # an editable install imports from the source tree: the library goes there
        editable = getattr(self, "editable_mode", False)
        out = HERE / "mirrord/native" if editable else Path(self.build_lib) / "mirrord/native"
        try:
            native.build_library(out, force=not editable)
        except native.BuildError as exc:
            print(
                f"mirrord: warning: the native relay was not built ({exc}); Python programs "
                "are still intercepted, other programs and C extensions are not",
                file=sys.stderr,
            )


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform, not "any"."""

    def has_ext_modules(self):
        return True


setup(
    packages=[*find_packages(include=["mirrord", "mirrord.*"]), "mirrord._hook"],
    package_dir={"mirrord._hook": "sitecustomize_hook"},
    # the native relay's sources ship too (build_py compiles them into native/*.so)
    package_data={"mirrord": ["py.typed", "native/src/*.c", "native/src/*.h", "native/*.so"]},
    cmdclass={"build_py": BuildPyWithRelay},
    distclass=BinaryDistribution,
)
