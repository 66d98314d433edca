"""Reader of the course's face layout: <root>/face/<split>/*.png + optional <root>/face/<split>.csv (attributes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dlcv.data.images import DataError, check_files_exist, list_images, read_csv, read_images

IMAGE_SIZE = 64
UNKNOWN = -1  # attribute not annotated for this face


@dataclass
class FaceSplit:
    """One split in memory: uint8 images (N, 3, 64, 64), int8 attributes (N, A) in {0, 1, -1 unknown}."""

    images: torch.Tensor
    attributes: torch.Tensor
    attribute_names: list[str]
    names: list[str]
    folder: Path

    def __len__(self) -> int:
        return len(self.names)

    def labels(self, attribute: str) -> torch.Tensor:
        """(N,) int64 labels of one attribute, -1 where unknown."""
        if attribute not in self.attribute_names:
            raise DataError(f"attribute {attribute!r} is not in {self.folder}.csv; "
                            f"choose from {self.attribute_names or '(none: this split has no attribute CSV)'}")
        return self.attributes[:, self.attribute_names.index(attribute)].long()


def read_faces(root: str | Path, split: str, image_size: int = IMAGE_SIZE, resize: bool = False) -> FaceSplit:
    """Read <root>/face/<split>. Without a CSV (the course's hw2_data) every image counts, with no attributes."""
    base = Path(root) / "face"
    folder = base / split
    csv_path = base / f"{split}.csv"
    if not folder.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise DataError(f"no face split {folder} (found {have}); run `python -m dlcv data prepare` or check --data.root")
    if csv_path.is_file():
        header, rows = read_csv(csv_path, required=("image_name",))
        attribute_names = [h for h in header if h != "image_name"]
        names = [r["image_name"] for r in rows]
        check_files_exist(folder, names, csv_path)
        values = []
        for r in rows:
            row = []
            for a in attribute_names:
                v = r[a]
                if v not in ("0", "1", ""):
                    raise DataError(f"{csv_path}: {a}={v!r} for {r['image_name']} must be 0, 1 or empty (unknown)")
                row.append(int(v) if v else UNKNOWN)
            values.append(row)
        attributes = torch.tensor(values, dtype=torch.int8).reshape(len(names), len(attribute_names))
    else:
        names = list_images(folder)
        attribute_names = []
        attributes = torch.zeros(len(names), 0, dtype=torch.int8)
    if not names:
        raise DataError(f"{folder} holds no images; check the path")
    array = read_images(folder, names, size=image_size, channels=3, resize=resize)
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return FaceSplit(images=images, attributes=attributes, attribute_names=attribute_names, names=names, folder=folder)
