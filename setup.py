"""Package layout: the top-level folders install as one namespace, `gazeloop.*`.

The folders stay where a reader expects them (`fastpath/`, `oracle/`, `calibration/`,
`trainer/`, `tools/`), and setuptools maps each to `gazeloop.<folder>`; every subpackage is
found, never listed by hand, so a new folder cannot be left out of the wheel.
"""

from setuptools import find_packages, setup

ROOMS = ("fastpath", "oracle", "calibration", "trainer", "tools")

packages = ["gazeloop"]
package_dir = {"gazeloop": "gazeloop"}
for room in ROOMS:
    package_dir[f"gazeloop.{room}"] = room
    packages += [f"gazeloop.{room}"] + [f"gazeloop.{room}.{p}" for p in find_packages(room)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={p: ["py.typed"] for p in packages},
)
