"""cliptrase-d2: training-free open-vocabulary semantic segmentation (CLIPtrase) for Detectron2."""

from setuptools import find_packages, setup

setup(
    name="cliptrase-d2",
    version="0.1.0",
    description="CLIPtrase (ECCV 2024) as a Detectron2 meta-architecture: training-free "
    "open-vocabulary semantic segmentation with CLIP",
    # configs/ is installed inside the package as cliptrase_d2/configs (cliptrase_d2.model_zoo)
    packages=find_packages(include=["cliptrase_d2", "cliptrase_d2.*"]) + ["cliptrase_d2.configs"],
    package_dir={"cliptrase_d2.configs": "configs"},
    package_data={
        "cliptrase_d2": ["data/*.json"],
        "cliptrase_d2.configs": ["**/*.yaml", "**/*.py"],
    },
    python_requires=">=3.11",  # as the README says; numpy 2.4 needs it too
    # detectron2 and torch are installed separately (see README): neither has one wheel for
    # everyone.
    install_requires=[
        "open-clip-torch>=3.0",
        "numpy",
        "pillow",
        "scipy",
        "scikit-learn",
        "pycocotools",
        "fvcore",
        "opencv-python-headless",
        "tqdm",
    ],
)
