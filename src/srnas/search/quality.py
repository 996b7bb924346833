"""The search's quality objective: PSNR of a candidate with inherited supernet weights, on validation crops.

Fast by construction: ``count`` fixed LR crops (``size`` x ``size``) of the validation images are stacked into one
batch once; a trial copies its subnet out of the supernet (``get_active_subnet``), prunes it physically when its
schemes say so (:func:`srnas.pruning.prune_subnet`), runs the batch once and scores each crop as the evaluation
protocol does (BasicSR: output rounded to 8 bits, Y channel, ``scale`` border pixels cropped). The forward runs in
the target's precision (bf16 autocast for a bf16 target): a latency is only ever paired with the quality of the
same arithmetic. Results are cached by network name (candidates that build the same network share one).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from srnas.arch.network import SubnetSR
from srnas.arch.pruned import PrunedSubnet
from srnas.errors import ConfigError, DataError
from srnas.metrics import calculate_psnr
from srnas.pruning import prune_subnet
from srnas.search.candidate import ArchCandidate
from srnas.supernet.supernet import SRSupernet
from srnas.training.patches import ImagePairs

__all__ = ["QualityEvaluator", "fixed_crops"]


def fixed_crops(pairs: ImagePairs, count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` aligned (LR, HR) crops, images taken in turn, positions drawn from ``seed``: (N,s,s,3), (N,sS,sS,3)."""
    s = pairs.scale
    usable = [i for i, lr in enumerate(pairs.lr) if lr.shape[0] >= size and lr.shape[1] >= size]
    if not usable:
        where = pairs.folder if pairs.folder is not None else "the validation set"
        raise DataError(f"{where}: no LR image is at least {size}x{size}; lower search_arch.crop_size")
    rng = np.random.default_rng(seed)
    lrs, hrs = [], []
    for k in range(count):
        i = usable[k % len(usable)]
        lr, hr = pairs.lr[i], pairs.hr[i]
        y = int(rng.integers(lr.shape[0] - size + 1))
        x = int(rng.integers(lr.shape[1] - size + 1))
        lrs.append(lr[y:y + size, x:x + size])
        hrs.append(hr[y * s:(y + size) * s, x * s:(x + size) * s])
    return np.stack(lrs), np.stack(hrs)


class QualityEvaluator:
    """``psnr(candidate)``: mean PSNR (dB) over the fixed crops of the candidate with inherited weights."""

    def __init__(self, supernet: SRSupernet, pairs: ImagePairs, *, count: int, size: int, precision: str,
                 prune_keep: float, importance: str = "l1") -> None:
        if pairs.scale != supernet.scale:
            raise ConfigError(f"validation pairs are x{pairs.scale}, the supernet is x{supernet.scale}")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"search_arch: quality in {precision} is not modelled (only fp32 and bf16 targets can be "
                              "searched: a latency must be paired with PSNR measured in the same precision)")
        self.supernet = supernet.eval()
        self.precision = precision
        self.prune_keep = prune_keep
        self.importance = importance
        lr, self.hr = fixed_crops(pairs, count, size)
        self.lr = torch.from_numpy(lr).permute(0, 3, 1, 2).float().div(255.0).contiguous()
        self._cache: dict[str, float] = {}

    def model(self, network: PrunedSubnet) -> SubnetSR:
        """The standalone ``network`` with inherited weights, physically pruned (every filter kept when it is not)."""
        return prune_subnet(self.supernet.get_active_subnet(network.config).eval(), network, self.importance)

    def psnr(self, candidate: ArchCandidate) -> float:
        """PSNR of a stage-2 candidate: its layers pruned to ``prune_keep`` on their schemes' grids."""
        return self.psnr_network(candidate.pruned(self.prune_keep))

    @torch.inference_mode()
    def psnr_network(self, network: PrunedSubnet) -> float:
        """PSNR of any (pruned) subnet of the supernet; cached by the network's name."""
        cached = self._cache.get(network.name)
        if cached is not None:
            return cached
        value = self.psnr_model(self.model(network))
        self._cache[network.name] = value
        return value

    @torch.inference_mode()
    def psnr_model(self, model: nn.Module) -> float:
        """PSNR of any model of the supernet's scale on the crops, in the target's precision (not cached)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = model.eval()(self.lr)
        sr = out.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        scale = self.supernet.scale
        return float(np.mean([calculate_psnr(a, b, crop_border=scale, test_y_channel=True) for a, b in zip(sr, self.hr)]))
