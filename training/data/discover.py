"""Find the images to prepare: any image folder, with breeds and boxes where it has the Stanford Dogs layout."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

WORDNET_FOLDER = re.compile(r"^n\d{8}-.+$")
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
    """One source image: its path, its unique id (`item_id`), the breed (from the folder name) and its boxes."""

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


def item_id(relative: Path) -> str:
    """The id of the image at `relative` (under --images): its relative POSIX path, extension included. Two files
    never share a path, so ids are unique by construction (`a/b.jpg`, `a__b.jpg`, `x.jpg` and `x.png` stay apart)."""
    return PurePosixPath(*relative.parts).as_posix()


def is_breed_folder(name: str) -> bool:
    """Stanford Dogs names its breed folders `<WordNet id>-<breed>`, e.g. `n02085620-Chihuahua`."""
    return WORDNET_FOLDER.match(name) is not None


def discover(images_dir: Path, annotations_dir: Path | None = None) -> list[ImageRecord]:
    """Every image under `images_dir`, recursively, with its id (`item_id`). An image directly inside a Stanford
    Dogs breed folder (`n02085620-Chihuahua/`) takes the breed from the folder's name and its boxes from
    `annotations_dir/<breed folder>/<stem>`; any other image is kept as it is, with no breed."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist (expected Stanford Dogs' Images/)")
    if annotations_dir is not None and not Path(annotations_dir).is_dir():
        raise FileNotFoundError(f"annotations folder {annotations_dir} does not exist (Stanford Dogs' Annotation/)")
    paths = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {images_dir}")
    records = []
    for path in paths:
        relative = path.relative_to(images_dir)
        breed, boxes = None, ()
        if len(relative.parts) == 2 and is_breed_folder(relative.parts[0]):
            breed = breed_from_folder(relative.parts[0])
            if annotations_dir is not None:
                xml_path = Path(annotations_dir) / relative.parts[0] / path.stem
                boxes = read_boxes(xml_path) if xml_path.is_file() else ()
        records.append(ImageRecord(path, item_id(relative), breed, boxes))
    return records


def read_split_list(mat_path: Path) -> set[str]:
    """Item ids in a Stanford Dogs `train_list.mat` / `test_list.mat` (file_list entries 'breed/name.jpg', which are
    the images' paths under Images/, and so their ids)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        entries = loadmat(str(mat_path))["file_list"]
    except (MatReadError, OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{mat_path} is not a Stanford Dogs split list (file_list entries): {err}") from None
    return {item_id(Path(str(e[0][0]))) for e in entries}
