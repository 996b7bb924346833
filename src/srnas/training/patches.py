"""Training data in memory and vectorised random patch sampling.

All training pairs are loaded once as uint8 and packed into two flat ``H x W x 3`` buffers (LR and HR).
A batch is drawn with a handful of tensor operations, no Python loop per patch:

1. one random integer per patch picks a position uniformly among *all* valid LR patch positions of all
   images (so large images give proportionally more patches, every pixel is equally likely);
2. one random integer per patch picks one of the 8 flips/rotations (the dihedral group; identity when
   ``augment`` is off), applied by permuting the patch's index grid, not the pixels;
3. one advanced-indexing gather per buffer reads the ``B x P x P x 3`` LR and ``B x sP x sP x 3`` HR patches.

The gathered NHWC tensor, permuted to NCHW, *is* a channels-last tensor, so the channels-last path costs
no copy. The random numbers come from a ``torch.Generator`` seeded by :func:`step_generator` from
``(seed, step)`` alone, so batch ``k`` is the same whether or not the run was interrupted before it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srnas.errors import DataError
from srnas.images import list_images, read_rgb

__all__ = ["ImagePairs", "PatchSampler", "load_pairs", "step_generator"]

logger = logging.getLogger(__name__)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator whose state is a pure function of ``(seed, step)`` (well mixed by NumPy's SeedSequence)."""
    state = np.random.SeedSequence([seed, step, 0x5352]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


@dataclass(frozen=True)
class ImagePairs:
    """Matching LR and HR images (uint8 ``H x W x 3``; HR exactly ``scale`` times LR) and their names."""

    names: tuple[str, ...]
    lr: tuple[np.ndarray, ...]
    hr: tuple[np.ndarray, ...]
    scale: int
    folder: Path | None = None

    def __len__(self) -> int:
        return len(self.names)


def load_pairs(folder: str | Path, scale: int) -> ImagePairs:
    """Read ``folder/hr/*.png`` and ``folder/lr/*.png`` (the prepared-data layout for one set and scale).

    Raises DataError naming the folder or file when a folder is missing or empty, names do not match,
    or an HR image is not exactly ``scale`` times its LR image.
    """
    folder = Path(folder)
    hr_dir, lr_dir = folder / "hr", folder / "lr"
    for sub in (hr_dir, lr_dir):
        if not sub.is_dir():
            raise DataError(f"{sub}: folder not found (run `srnas prepare-data` first)")
    hr_files = {p.stem: p for p in list_images(hr_dir)}
    lr_files = {p.stem: p for p in list_images(lr_dir)}
    if not hr_files:
        raise DataError(f"{hr_dir}: no images")
    if set(hr_files) != set(lr_files):
        missing = sorted(set(hr_files) ^ set(lr_files))
        raise DataError(f"{folder}: hr/ and lr/ hold different images (unmatched: {', '.join(missing[:5])})")
    names, lrs, hrs = [], [], []
    for name in sorted(hr_files):
        hr = read_rgb(hr_files[name])
        lr = read_rgb(lr_files[name])
        if hr.shape != (lr.shape[0] * scale, lr.shape[1] * scale, 3):
            raise DataError(
                f"{hr_files[name]}: HR is {hr.shape[1]}x{hr.shape[0]} but LR {lr_files[name].name} is "
                f"{lr.shape[1]}x{lr.shape[0]}; expected exactly x{scale}"
            )
        names.append(name)
        lrs.append(lr)
        hrs.append(hr)
    return ImagePairs(tuple(names), tuple(lrs), tuple(hrs), scale, folder)


class PatchSampler:
    """Random aligned (LR, HR) patch batches from images held in memory as uint8."""

    def __init__(self, pairs: ImagePairs, lr_patch_size: int) -> None:
        self.scale = scale = pairs.scale
        self.patch = patch = lr_patch_size
        keep = [i for i, lr in enumerate(pairs.lr) if lr.shape[0] >= patch and lr.shape[1] >= patch]
        if len(keep) < len(pairs):
            skipped = [pairs.names[i] for i in range(len(pairs)) if i not in keep]
            logger.warning("skipping %d image(s) smaller than the %dx%d LR patch: %s", len(skipped), patch, patch, ", ".join(skipped[:5]))
        if not keep:
            where = pairs.folder if pairs.folder is not None else "training data"
            raise DataError(f"{where}: no LR image is at least {patch}x{patch} pixels (lower lr_patch_size)")
        self.names = tuple(pairs.names[i] for i in keep)
        lr_list = [pairs.lr[i] for i in keep]
        hr_list = [pairs.hr[i] for i in keep]
        lr_h = torch.tensor([a.shape[0] for a in lr_list], dtype=torch.int64)
        lr_w = torch.tensor([a.shape[1] for a in lr_list], dtype=torch.int64)
        sizes_lr = lr_h * lr_w * 3
        self._lr_w = lr_w
        self._hr_w = lr_w * scale
        self._lr_base = torch.cumsum(sizes_lr, 0) - sizes_lr
        self._hr_base = self._lr_base * scale * scale
        self._lr_buf = torch.from_numpy(np.concatenate([a.reshape(-1) for a in lr_list]))
        self._hr_buf = torch.from_numpy(np.concatenate([a.reshape(-1) for a in hr_list]))
        self._cols = lr_w - patch + 1
        positions = (lr_h - patch + 1) * self._cols
        self._pos_end = torch.cumsum(positions, 0)
        self._pos_start = self._pos_end - positions
        self.positions = int(self._pos_end[-1])
        self._grid = torch.arange(patch, dtype=torch.int64)
        self._grid_hr = torch.arange(patch * scale, dtype=torch.int64)
        self._rgb = torch.arange(3, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """Hash of the pixels, sizes and names: a checkpoint is resumed only on the same data."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((self.scale, self.patch, self.names, self._lr_w.tolist(), self._lr_base.tolist())).encode())
        digest.update(self._lr_buf.numpy().data)
        digest.update(self._hr_buf.numpy().data)
        return digest.hexdigest()

    def _indices(self, size: int, rows: torch.Tensor, cols: torch.Tensor, width: torch.Tensor, base: torch.Tensor,
                 transform: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Flat buffer indices ``B x size x size x 3`` of transformed patches at (rows, cols)."""
        n = rows.shape[0]
        ii = grid.view(1, size, 1).expand(n, size, size)
        jj = grid.view(1, 1, size).expand(n, size, size)
        swap = (transform & 4).bool().view(n, 1, 1)
        ii, jj = torch.where(swap, jj, ii), torch.where(swap, ii, jj)
        ii = torch.where((transform & 2).bool().view(n, 1, 1), size - 1 - ii, ii)
        jj = torch.where((transform & 1).bool().view(n, 1, 1), size - 1 - jj, jj)
        pixel = (rows.view(n, 1, 1) + ii) * width.view(n, 1, 1) + cols.view(n, 1, 1) + jj
        return (base.view(n, 1, 1, 1) + pixel.unsqueeze(-1) * 3) + self._rgb

    def sample_uint8(self, batch_size: int, generator: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` uint8 NHWC batches: ``B x P x P x 3`` and ``B x sP x sP x 3``."""
        position = torch.randint(0, self.positions, (batch_size,), generator=generator, dtype=torch.int64)
        transform = (
            torch.randint(0, 8, (batch_size,), generator=generator, dtype=torch.int64)
            if augment
            else torch.zeros(batch_size, dtype=torch.int64)
        )
        image = torch.searchsorted(self._pos_end, position, right=True)
        local = position - self._pos_start[image]
        row = torch.div(local, self._cols[image], rounding_mode="floor")
        col = local - row * self._cols[image]
        lr_idx = self._indices(self.patch, row, col, self._lr_w[image], self._lr_base[image], transform, self._grid)
        s = self.scale
        hr_idx = self._indices(self.patch * s, row * s, col * s, self._hr_w[image], self._hr_base[image], transform, self._grid_hr)
        return self._lr_buf[lr_idx], self._hr_buf[hr_idx]

    def sample(self, batch_size: int, generator: torch.Generator, augment: bool, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` float32 NCHW batches in [0, 1]; channels-last strided when ``channels_last``."""
        lr, hr = self.sample_uint8(batch_size, generator, augment)
        out = []
        for t in (lr, hr):
            t = t.permute(0, 3, 1, 2)
            t = t.float() if channels_last else t.contiguous().float()
            out.append(t.div_(255.0))
        return out[0], out[1]
