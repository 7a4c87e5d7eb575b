"""The built-in data set: scikit-learn's bundled handwritten digits (1,797 8x8 images, no
download), upsampled to 32x32 and split into fixed stratified train/val/test parts."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

DIGITS_CLASSES = 10


def digits_splits(size: int = 32, val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> Dict[str, TensorDataset]:
    """``{"train", "val", "test"}`` datasets of ``(1, size, size)`` float images and int64 labels.

    The split is stratified by class and fixed by ``seed``; pixels are normalized with the
    training split's mean and standard deviation.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:  # scikit-learn is the optional "train" extra
        raise ImportError("the built-in digits data set needs scikit-learn: pip install 'effdrop-triton[train]'") from error
    if size < 8:
        raise ValueError(f"size must be at least 8 (the digits are 8x8), got {size}")
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target).long()
    index = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(index, test_size=test_fraction, stratify=digits.target, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=digits.target[rest],
                                  random_state=seed)
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return {name: TensorDataset(images[part], labels[part]) for name, part in
            (("train", train), ("val", val), ("test", test))}
