from setuptools import setup

# kernels/ (Triton) is installed as the subpackage lightcache.kernels.
setup(
    packages=["lightcache", "lightcache.reference", "lightcache.kernels"],
    package_dir={"lightcache.kernels": "kernels"},
)
