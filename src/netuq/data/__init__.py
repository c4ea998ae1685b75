"""Embedded data for the benchmark and the examples: everything offline, seeded and small.

* :func:`load_digits`: scikit-learn's 8x8 digits, stratified train/val/test splits.
* :func:`corrupt` and ``SHIFTS``: rotation, Gaussian noise, blur and pixel dropout at severities
  1..5, for calibration under distribution shift (Ovadia et al. 2019).
* :func:`ood_images`: out-of-distribution inputs (photo patches, digits and noise); :func:`fashion_ood`
  the near- and far-OOD sets for Fashion-MNIST.
* :func:`digit_scenes`, :func:`split_scenes`, :func:`load_digit_scenes`: a segmentation task
  (digits on a canvas, per-pixel labels) with unknown objects labelled ``ignore_index``.
* :func:`load_torchvision`: MNIST, Fashion-MNIST and CIFAR-10 from a local folder (torchvision
  optional; a built-in reader handles every layout of the IDX files, compressed or not), and
  Fashion-MNIST from the Debian package's folder when no folder is given.

Importing this package imports neither torchvision nor scikit-learn's data sets until a function
needs them.
"""

from .digits import ClassificationData, Split, load_digits, split_indices
from .ood import FASHION_OOD_KINDS, OOD_KINDS, fashion_ood, ood_images, sample_image
from .scenes import IGNORE_INDEX, SceneData, Scenes, digit_scenes, load_digit_scenes, split_scenes
from .shifts import SEVERITY_PARAMS, SHIFTS, corrupt
from .vision import DEFAULT_DIRS, VISION_DATASETS, idx_folders, load_torchvision, read_cifar10, read_idx, read_mnist

__all__ = [
    "Split",
    "ClassificationData",
    "load_digits",
    "split_indices",
    "SHIFTS",
    "SEVERITY_PARAMS",
    "corrupt",
    "OOD_KINDS",
    "FASHION_OOD_KINDS",
    "fashion_ood",
    "ood_images",
    "sample_image",
    "IGNORE_INDEX",
    "Scenes",
    "SceneData",
    "digit_scenes",
    "split_scenes",
    "load_digit_scenes",
    "VISION_DATASETS",
    "DEFAULT_DIRS",
    "idx_folders",
    "load_torchvision",
    "read_idx",
    "read_mnist",
    "read_cifar10",
]
