"""Data sets, transforms and loaders of ``effdrop-train``.

``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 images, no download), upsampled
to 32x32 and split into fixed stratified train/val/test parts (:func:`digits_splits`);
``cifar10``, ``cifar100`` and ``svhn`` are read by torchvision's classes from ``--data-dir`` (fetched
there with ``--download``); ``imagenet`` is any ImageNet-style pair of ``train/`` and ``val/`` class
folders (``ImageFolder``). The validation set is a stratified, seeded part of the training set,
seen through the evaluation transform; the test set (CIFAR/SVHN test split, the ImageNet ``val/``
folder, the digits test part) is only evaluated at the end of training.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision import datasets as tvd
from torchvision import transforms as T

from .distributed import DistInfo, ShardSampler

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagenet")
SPLIT_SEED = 0
DIGITS_CLASSES = 10

# per-channel mean and standard deviation of each training set
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DatasetNotFound(FileNotFoundError):
    """The data set's files are missing or unreadable; the message names them and the remedy."""


@dataclasses.dataclass
class DataSplits:
    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    num_classes: int
    in_channels: int


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


def transforms_for(name: str) -> Tuple[T.Compose, T.Compose]:
    """(training, evaluation) transforms: CIFAR 4-pixel-pad random crop + horizontal flip; SVHN none
    (digits must not be mirrored; Wide-ResNet's SVHN setting); ImageNet RandomResizedCrop(224) + flip,
    evaluated at Resize(256) + CenterCrop(224). All end in ToTensor and per-channel normalization."""
    finish = [T.ToTensor(), T.Normalize(*_STATS[name])]
    if name == "imagenet":
        return (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *finish]),
                T.Compose([T.Resize(256), T.CenterCrop(224), *finish]))
    if name == "svhn":
        return T.Compose(finish), T.Compose(finish)
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *finish]), T.Compose(finish)


def expected_files(name: str, root: Path, svhn_extra: bool = False) -> List[Path]:
    """The files (folders for ImageNet) torchvision reads for data set ``name`` under ``root``."""
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        names = [entry[0] for entry in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / file for file in names]
    if name == "svhn":
        splits = ("train", "test", "extra") if svhn_extra else ("train", "test")
        return [root / tvd.SVHN.split_list[split][1] for split in splits]
    return [root / "train", root / "val"]


def _missing_message(name: str, root: Path, files: Sequence[Path], download: bool, detail: str = "") -> str:
    listing = "\n  ".join(str(f) + ("/<class>/<image>" if name == "imagenet" else "") for f in files)
    if name == "imagenet":
        remedy = "ImageNet-style folders are not downloadable: put them there by hand"
    elif download:
        remedy = "--download did not get them: check the network, or put the files there by hand"
    else:
        remedy = "pass --download to fetch them there, or point --data-dir at a folder that has them"
    return f"{name} data set not found in {root}{detail}; expected:\n  {listing}\n{remedy}"


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """(train, val) indices: ``round(fraction * n_c)`` samples of each class ``c`` drawn for
    validation with a generator seeded by ``seed``, so the split is the same on every run and rank."""
    targets = torch.as_tensor(list(targets))
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in torch.unique(targets):
        members = (targets == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        val += members[:count].tolist()
        train += members[count:].tolist()
    return sorted(train), sorted(val)


class _Part(Dataset):
    """Samples ``indices`` of ``base`` (which yields ``(image, label)`` untransformed) through ``transform``:
    the training and validation parts of one training set, with their own transforms."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.base[self.indices[index]]
        return self.transform(image), label


def _torchvision_sets(name: str, root: Path, download: bool, svhn_extra: bool, eval_transform):
    """(training set without transform, its labels, test set, number of classes)."""
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, transform=eval_transform, download=download)
        return train, train.targets, test, len(train.classes)
    if name == "svhn":
        parts = [tvd.SVHN(str(root), split=split, download=download)
                 for split in (("train", "extra") if svhn_extra else ("train",))]
        test = tvd.SVHN(str(root), split="test", transform=eval_transform, download=download)
        labels = [int(label) for part in parts for label in part.labels]
        return ConcatDataset(parts), labels, test, 10
    train = tvd.ImageFolder(str(root / "train"))
    test = tvd.ImageFolder(str(root / "val"), transform=eval_transform)
    if test.classes != train.classes:
        raise DatasetNotFound(f"{root / 'val'} has other class folders than {root / 'train'}")
    return train, train.targets, test, len(train.classes)


def load_datasets(name: str, data_dir: str, download: bool = False, val_split: float = 0.1,
                  svhn_extra: bool = False) -> DataSplits:
    """The train/val/test sets of ``name``; ``val_split`` of the training set is held out for
    validation (``0``: no validation set) by a split fixed by :data:`SPLIT_SEED`, not by the run's
    seed, so runs with different seeds are compared on the same images. ``DatasetNotFound`` when
    files are missing or unreadable."""
    if name == "digits":
        splits = digits_splits(val_fraction=val_split or 0.1, seed=SPLIT_SEED)
        train = splits["train"] if val_split else ConcatDataset([splits["train"], splits["val"]])
        return DataSplits(train, splits["val"] if val_split else None, splits["test"], DIGITS_CLASSES, 1)
    root = Path(data_dir).expanduser()
    files = expected_files(name, root, svhn_extra)
    if name == "imagenet" and download:
        raise DatasetNotFound(_missing_message(name, root, files, download, " (--download cannot fetch ImageNet)"))
    missing = [f for f in files if not f.exists()]
    if missing and not download:
        raise DatasetNotFound(_missing_message(name, root, missing, download))
    train_transform, eval_transform = transforms_for(name)
    try:
        base, targets, test, num_classes = _torchvision_sets(name, root, download, svhn_extra, eval_transform)
    except (RuntimeError, OSError) as error:  # torchvision: corrupted (md5) files, failed download, no images
        raise DatasetNotFound(_missing_message(name, root, files, download, f" or unreadable ({error})")) from error
    if val_split:
        train_idx, val_idx = stratified_split(targets, val_split, SPLIT_SEED)
        val = _Part(base, val_idx, eval_transform)
    else:
        train_idx, val = range(len(targets)), None
    return DataSplits(_Part(base, train_idx, train_transform), val, test, num_classes, 3)


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C signals the terminal's whole process group: workers leave it to the main process, which
    finishes its step and saves, instead of dying under it (a dead worker fails the next batch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loaders(splits: DataSplits, batch_size: int, workers: int, info: DistInfo, generator: torch.Generator,
                 seed: int, pin_memory: bool):
    """(train, val or None, test) loaders. Training: shuffled by ``generator`` (which also seeds the
    workers: PyTorch seeds each worker's torch, random and NumPy from it), or by a
    ``DistributedSampler`` seeded by ``seed`` under DDP; incomplete last batches are dropped so no
    step normalizes a batch of one. Evaluation: every sample once, split over the ranks without padding.
    Workers are not persistent: a fresh set per epoch, seeded from ``generator``, is what makes a
    resumed epoch draw the same augmentations."""
    common = dict(num_workers=workers, pin_memory=pin_memory, worker_init_fn=_ignore_sigint if workers else None)
    if info.enabled:
        sampler = DistributedSampler(splits.train, info.world_size, info.rank, shuffle=True, seed=seed)
        train = DataLoader(splits.train, batch_size, sampler=sampler, drop_last=True, generator=generator, **common)
    else:
        train = DataLoader(splits.train, batch_size, shuffle=True, drop_last=True, generator=generator, **common)

    def evaluation(dataset):
        if dataset is None:
            return None
        sampler = ShardSampler(len(dataset), info) if info.enabled else None
        return DataLoader(dataset, 2 * batch_size, sampler=sampler, **common)  # no grad: twice the batch fits

    return train, evaluation(splits.val), evaluation(splits.test)
