"""Package layout: everything installs under the one import name ``bioseq``.

The repository keeps the product's top-level folders (models/, datamodules/, finetune/, configs/);
they are installed as ``bioseq.models``, ``bioseq.datamodules``, ``bioseq.finetune`` and
``bioseq.configs`` (the shipped YAML files), so a user's own ``models.py`` can never shadow ours.
Metadata lives in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = ("models", "datamodules", "finetune", "configs")

packages = find_packages(include=["bioseq", "bioseq.*"])
package_dir = {"bioseq": "bioseq"}
for folder in MAPPED:
    package_dir[f"bioseq.{folder}"] = folder
    # configs/ holds YAML folders without __init__.py: list them as (namespace) packages of data
    finder = find_namespace_packages if folder == "configs" else find_packages
    packages += [f"bioseq.{name}" for name in finder(include=[folder, f"{folder}.*"])]

setup(packages=packages, package_dir=package_dir)
