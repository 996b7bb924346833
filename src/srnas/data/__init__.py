"""Data for the ``prepare_data`` stage: image sources, verified downloads, and HR/LR pair preparation."""

from srnas.data.download import download_file, fetch_archive, safe_extract
from srnas.data.prepare import SkippedImageWarning, image_pairs, load_manifest, prepare_data
from srnas.data.sources import SKIMAGE_PHOTOS, SourceImage, source_images

__all__ = [
    "SKIMAGE_PHOTOS",
    "SkippedImageWarning",
    "SourceImage",
    "download_file",
    "fetch_archive",
    "image_pairs",
    "load_manifest",
    "prepare_data",
    "safe_extract",
    "source_images",
]
