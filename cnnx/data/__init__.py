"""The data sets on the host: IDX and Kaggle-CSV readers, discovery, verified downloads, subsets.

Everything here is plain NumPy. Pixels stay uint8 until a batch is scaled with ``scale_pixels``; moving
a batch to the device is the backend's job. Malformed input raises ``DataError`` with one line that
names the file and the problem.

The package is split by job: ``readers`` (the file formats and the size cap), ``images`` (a
user's own pictures, read through Pillow and prepared as the data set's images were made), ``folders``
(a data set of one's own pictures, ``train/<class>/*.png``), ``sources`` (where the data set is found
on disk, and the verified download), ``dataset`` (``Dataset``, loading, subsets, scaling) and
``catalog`` (the data sets a run can name). Every public name is re-exported here. The constants are
read by the submodule that defines them, so a test that patches one patches it there
(``cnnx.data.sources.MIRRORS``), not here.
"""

from __future__ import annotations

from .augment import TRANSFORMS, Augmenter, format_augment, parse_augment
from .catalog import DATASETS, class_count, class_names, digest, image_folder, load_dataset
from .dataset import (
    CLASS_NAMES,
    MAX_CLASSES,
    SUBSET_SEED,
    Dataset,
    balanced_subset,
    load_fashion_mnist,
    load_idx_dataset,
    model_inputs,
    scale_pixels,
)
from .folders import ImageFolder, is_image_folder, load_image_folder, scan_image_folder
from .images import (
    IMAGE_SUFFIXES,
    LOW_CONTRAST,
    PICTURE_FORMATS,
    image_files,
    prepare_image,
    read_photo,
    to_grey,
)
from .readers import (
    IMAGE_SHAPE,
    MAX_UNPACKED_BYTES,
    read_csv,
    read_idx,
    read_image_file,
    write_csv,
    write_idx,
)
from .sources import (
    CSV_FILES,
    ENV_VAR,
    IDX_DATASETS,
    IDX_FILES,
    MIRRORS,
    PAYLOAD_SHA256,
    SYSTEM_DIR,
    IdxSource,
    Search,
    cache_dir,
    candidate_dirs,
    download,
    download_fashion_mnist,
    find_dataset,
    idx_source,
    recognise,
    search,
)

__all__ = [
    "DATASETS",
    "class_count",
    "class_names",
    "digest",
    "image_folder",
    "load_dataset",
    "ImageFolder",
    "is_image_folder",
    "load_image_folder",
    "scan_image_folder",
    "LOW_CONTRAST",
    "MAX_CLASSES",
    "PICTURE_FORMATS",
    "Search",
    "recognise",
    "search",
    "TRANSFORMS",
    "Augmenter",
    "format_augment",
    "parse_augment",
    "CLASS_NAMES",
    "CSV_FILES",
    "ENV_VAR",
    "IDX_DATASETS",
    "IDX_FILES",
    "IdxSource",
    "IMAGE_SHAPE",
    "MAX_UNPACKED_BYTES",
    "MIRRORS",
    "PAYLOAD_SHA256",
    "SUBSET_SEED",
    "SYSTEM_DIR",
    "Dataset",
    "balanced_subset",
    "cache_dir",
    "candidate_dirs",
    "download",
    "download_fashion_mnist",
    "find_dataset",
    "idx_source",
    "load_fashion_mnist",
    "load_idx_dataset",
    "read_csv",
    "read_idx",
    "read_image_file",
    "IMAGE_SUFFIXES",
    "image_files",
    "prepare_image",
    "read_photo",
    "to_grey",
    "model_inputs",
    "scale_pixels",
    "write_csv",
    "write_idx",
]
