"""Find the images to prepare: the Stanford Dogs layout (with optional boxes and split lists) or a plain folder."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Box:
    """An annotated object box in pixel coordinates (inclusive-exclusive)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass(frozen=True)
class ImageRecord:
    """One source image: its path, a unique id, the breed (from the folder name) and its boxes."""

    path: Path
    item_id: str
    breed: str | None = None
    boxes: tuple[Box, ...] = field(default_factory=tuple)


def breed_from_folder(folder_name: str) -> str:
    """'n02085620-Chihuahua' → 'chihuahua'; 'n02086240-Shih-Tzu' → 'shih-tzu'; underscores become spaces."""
    _, _, name = folder_name.partition("-")
    return (name or folder_name).replace("_", " ").lower()


def read_boxes(xml_path: Path) -> tuple[Box, ...]:
    """Object boxes of a Stanford Dogs annotation file (PASCAL VOC style XML, no extension)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        logger.warning("unreadable annotation %s (%s): no box used", xml_path, err)
        return ()
    boxes = []
    for node in root.iter("bndbox"):
        values = [int(float(node.findtext(tag, "0"))) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if values[2] > values[0] and values[3] > values[1]:
            boxes.append(Box(*values))
    return tuple(boxes)


def discover_stanford_dogs(images_dir: Path, annotations_dir: Path | None = None) -> list[ImageRecord]:
    """`Images/<wnid>-<breed>/<wnid>_<n>.jpg`, boxes from `Annotation/<wnid>-<breed>/<wnid>_<n>` when given."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist (expected Stanford Dogs' Images/)")
    records = []
    for breed_dir in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        breed = breed_from_folder(breed_dir.name)
        for path in sorted(p for p in breed_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            boxes: tuple[Box, ...] = ()
            if annotations_dir is not None:
                xml_path = Path(annotations_dir) / breed_dir.name / path.stem
                boxes = read_boxes(xml_path) if xml_path.is_file() else ()
            records.append(ImageRecord(path, path.stem, breed, boxes))
    if not records:
        raise ValueError(
            f"no images found under {images_dir}/<breed folder>/; is this the Stanford Dogs Images/ folder?"
        )
    return records


def discover_folder(images_dir: Path) -> list[ImageRecord]:
    """Every image under a plain folder (recursively); ids are the relative paths with '/' → '__'."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist")
    paths = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {images_dir}")
    return [ImageRecord(p, "__".join(p.relative_to(images_dir).with_suffix("").parts)) for p in paths]


def discover(images_dir: Path, annotations_dir: Path | None = None) -> list[ImageRecord]:
    """Stanford Dogs layout when the folder holds breed sub-folders named `<wnid>-<breed>`, else a plain folder."""
    images_dir = Path(images_dir)
    if images_dir.is_dir() and any(
        p.is_dir() and p.name.startswith("n") and "-" in p.name for p in images_dir.iterdir()
    ):
        return discover_stanford_dogs(images_dir, annotations_dir)
    return discover_folder(images_dir)


def read_split_list(mat_path: Path) -> set[str]:
    """Item ids in a Stanford Dogs `train_list.mat` / `test_list.mat` (file_list entries 'breed/id.jpg')."""
    from scipy.io import loadmat

    entries = loadmat(str(mat_path))["file_list"]
    return {Path(str(e[0][0])).stem for e in entries}
