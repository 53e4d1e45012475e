"""Data: procedural CT phantoms, localized OOD artifacts with ground-truth masks, dataset loaders, and shifts that
keep the measurements' energy (:mod:`~priorshift.data.shifts`: energy matching, structure-only shifts).

Importing this package registers the ``dataset`` entries (``phantom-ct``, ``fashion-mnist``, ``mnist``,
``folder``, ``npy``, ``dicom``, ``shepp-logan``); :func:`load_dataset` loads any of them.
"""

from .artifacts import (MIN_COVERAGE, LabeledSet, blob_set, healthy_set, insert_lesion, insert_scar, insert_star,
                        lesion_set, paste_patch, scar_set, star_set)
from .datasets import (FASHION_MNIST_DIR, DatasetNotFoundError, dicom_slice, fashion_mnist, image_folder, mnist,
                       npy_stack, resize, shepp_logan)
from .load import load_dataset
from .inserts import insert_ring_lesion, insert_texture, ring_set, texture_set
from .shifts import apply_shift, flip, jigsaw, match_energy, measurement_energy, rot90, tile_shuffle
from .phantoms import LABEL_NAMES, Phantom, PhantomCT, ct_phantom, derive_seed, phantom_batch, phantom_stream

__all__ = [
    "Phantom", "PhantomCT", "ct_phantom", "phantom_stream", "phantom_batch", "derive_seed", "LABEL_NAMES",
    "MIN_COVERAGE", "LabeledSet", "insert_lesion", "insert_star", "insert_scar", "paste_patch",
    "healthy_set", "lesion_set", "blob_set", "star_set", "scar_set",
    "DatasetNotFoundError", "FASHION_MNIST_DIR", "fashion_mnist", "mnist", "image_folder", "npy_stack",
    "dicom_slice", "shepp_logan", "resize", "load_dataset",
    "insert_ring_lesion", "insert_texture", "ring_set", "texture_set",
    "match_energy", "measurement_energy", "apply_shift", "tile_shuffle", "jigsaw", "flip", "rot90",
]
