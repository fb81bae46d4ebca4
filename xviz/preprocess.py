"""Image -> model input, and model input -> picture, following what each set of weights expects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the tensor the weights were trained on."""

    size: int = 299  # side of the square input
    resize: str = "bilinear"  # "nearest" | "bilinear" | "bicubic" (PIL filter)
    crop_pct: float = 1.0  # < 1: resize to size / crop_pct, then centre-crop size (timm); 1: straight resize (Keras)
    mean: float = 0.5  # Keras 'tf' mode: x / 127.5 - 1 == (x / 255 - 0.5) / 0.5
    std: float = 0.5

    def __post_init__(self):
        if self.resize not in _RESAMPLE:
            raise ValueError(f"resize must be one of {sorted(_RESAMPLE)}, got {self.resize!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def with_size(self, size: int) -> "Preprocessing":
        return Preprocessing(size, self.resize, self.crop_pct, self.mean, self.std)

    def resized(self, img: Image.Image) -> Image.Image:
        """The RGB picture the network sees, before scaling to [-1, 1]."""
        filt = _RESAMPLE[self.resize]
        if self.crop_pct >= 1.0:
            return img.resize((self.size, self.size), filt)
        # timm: shorter side to size / crop_pct, then the central size x size
        scale = int(self.size / self.crop_pct)
        w, h = img.size
        if w <= h:
            img = img.resize((scale, max(1, round(h * scale / w))), filt)
        else:
            img = img.resize((max(1, round(w * scale / h)), scale), filt)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """(1, 3, size, size) float32 tensor, scaled like the training data."""
        arr = np.asarray(self.resized(img), dtype=np.float32)  # (H, W, 3) in [0, 255]
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)  # (H, W, 3) -> (1, 3, H, W)
        return (x / 255.0 - self.mean) / self.std

    def describe(self) -> str:
        if self.crop_pct >= 1.0:
            how = f"resized straight to {self.size}×{self.size} ({self.resize})"
        else:
            how = (f"shorter side resized to {int(self.size / self.crop_pct)} ({self.resize}), "
                   f"centre {self.size}×{self.size} cropped")
        if self.mean == 0.5 and self.std == 0.5:
            scale = "pixels scaled to [-1, 1] (x / 127.5 − 1, Keras 'tf' mode)"
        else:
            scale = f"pixels normalised with mean {self.mean}, std {self.std}"
        return f"{how}; {scale}"


def to_display(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """Undo the scaling of one preprocessed image: (1, 3, H, W) or (3, H, W) -> (H, W, 3) uint8."""
    if x.dim() == 4:
        x = x[0]
    arr = (x.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (3,H,W)->(H,W,3)
    return (arr * 255.0 + 0.5).astype(np.uint8)
