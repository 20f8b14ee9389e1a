"""Build configuration beyond what pyproject.toml can say: the sitecustomize hook that
loads the layer lives in sitecustomize_hook/ in the checkout and ships in the wheel as
the package mirrord._hook, so that an installed mirrord can put it on an app's path."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mirrord", "mirrord.*"]), "mirrord._hook"],
    package_dir={"mirrord._hook": "sitecustomize_hook"},
    package_data={"mirrord": ["py.typed"]},
)
