"""The config's schema: one dataclass per section, every key with its type and default.

Keys with a fixed set of values are typed with a ``Literal`` of them (`DatasetName`,
`OptimName`, ...): the schema is where each set of choices is written, the registries of
the layers that implement them (``simclr.data.datasets.DATASETS``,
``simclr.train.optim.OPTIMIZERS``, ...) hold exactly those keys (a test checks it), and a value
outside the set is refused when it is set, with the choices and the closest one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DatasetName = Literal["cifar10", "cifar100", "cifar100_coarse", "fashion_mnist", "folder",
                      "mnist", "stl10"]
OptimName = Literal["adam", "adamw", "lars", "sgd"]
LrScaling = Literal["linear", "sqrt", "none"]
StepRule = Literal["epochs", "reference"]  # see simclr.train.optim.step_counts
Stem = Literal["auto", "cifar", "imagenet"]
Shortcut = Literal["identity", "projection"]
Init = Literal["torchvision", "reference"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Stream = Literal["auto", "on", "off"]
Interpolation = Literal["bilinear", "bicubic"]
LossName = Literal["ntxent", "dcl", "dclw"]
RESNETS = ("resnet18", "resnet34", "resnet50")  # model.arch values of our own ResNets


@dataclass
class Data:
    name: DatasetName = "cifar10"  # spelled any way up to case, - and _ (CIFAR-10)
    root: str | None = None  # folder/archive with the data; None -> default location/cache
    subset: int = 0  # first N training images; 0 = all
    image_size: int = 0  # resize to this side; 0 = the dataset's native size (folders: 64)
    download: bool = True  # fetch official files (md5-checked) when missing
    split: str = "train"  # training split: train | unlabeled | train+unlabeled (STL-10)
    stream: Stream = "auto"  # folder: on (decode per batch in workers) | off | auto (when too big)


@dataclass
class Augment:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip_p: float = 0.5  # probability of a horizontal flip
    jitter_strength: float = 0.5  # s: brightness/contrast/saturation 0.8s, hue 0.2s
    jitter_p: float = 0.8  # probability of color jitter (random order of its four ops)
    gray_p: float = 0.2  # probability of grayscale
    blur_p: float | None = None  # None: 0.5 above 32 px, off at <= 32 px (the reference)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range, pixels (kernel ~ side/10)
    crop_interpolation: Interpolation = "bilinear"  # bicubic: the reference (Keys a=-0.5)
    mean: tuple[float, ...] | None = None  # per-channel; None -> measured on the training data
    std: tuple[float, ...] | None = None  # per-channel; None -> measured on the training data
    # view groups [count, size] or [count, size, scale_lo, scale_hi]: size <= 1 is a fraction
    # of the image side, > 1 pixels; the crop scale defaults to crop_scale
    views: tuple[tuple[int | float, ...], ...] = ((2, 1),)
    # a view-size schedule, a pure function of the step: the views start at size_start x their
    # size and grow to it over the part size_ramp of the run (fractions of its steps), pixel by
    # pixel, or in size_stages equal stages (0: pixel by pixel); size_start 1 = no schedule
    size_start: float = 1.0
    size_ramp: tuple[float, float] = (0.0, 1.0)  # the part of the run's steps the size grows over
    size_stages: int = 0  # grow in this many equal stages; 0 = pixel by pixel


@dataclass
class Model:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | timm:NAME | torchvision:NAME
    width: float = 1.0  # multiplier of 64-128-256-512 channels
    stem: Stem = "auto"  # cifar (3x3, no max-pool) | imagenet | auto (cifar for <= 64 px)
    proj_layers: int = 2  # linear layers in the projection head
    proj_hidden: int = 0  # hidden width; 0 = the encoder's feature dim
    proj_dim: int = 128  # output dim z of the head, where the loss is computed
    proj_bn: bool = False  # BatchNorm after each hidden linear layer of the head
    proj_bn_last: bool = False  # BatchNorm (scale only) on the output layer too, no bias there
    shortcut: Shortcut = "identity"  # a stage's first block when the shapes already match
    zero_init_residual: bool = False  # last BN gamma of every block starts at 0 (the reference)
    # keyword arguments of timm.create_model / torchvision's builder, e.g. {img_size: 28,
    # patch_size: 4} for a ViT on 28 px images (timm: and torchvision: archs only)
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: Init = "torchvision"  # torchvision | reference (tf VarianceScaling convs, N(0, .01) head)
    sync_bn: bool = True  # global BatchNorm over all processes when distributed


@dataclass
class Loss:
    name: LossName = "ntxent"  # ntxent | dcl | dclw: decoupled (Yeh et al. 2022), w: weighted
    temperature: float = 0.5  # T: similarities are cosine / T
    scale: float = 1.0  # the optimizer minimizes scale x the logged per-view mean (2 = the tf ref)
    supervised: bool = False  # SupCon: every view of an image with the same label is a positive
    dclw_sigma: float = 0.5  # dclw: the von Mises-Fisher weight's sigma (the paper's 0.5)


@dataclass
class Optim:
    name: OptimName = "lars"  # lars (the reference) | sgd | adam (AdamW)
    lr: float | None = None  # base lr, scaled by lr_scaling; None: OPTIM_DEFAULTS[name]
    lr_scaling: LrScaling = "linear"  # linear (lr x B/256) | sqrt (lr x sqrt(B), the ref) | none
    weight_decay: float | None = None  # None: OPTIM_DEFAULTS[name]
    momentum: float = 0.9  # lars / sgd momentum; adam's beta1
    nesterov: bool = False  # sgd: Nesterov momentum
    eta: float = 1e-3  # LARS trust coefficient
    warmup_epochs: float = 10.0  # linear warmup from 0, then cosine decay to 0, per step
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass
class Train:
    batch_size: int = 512  # global batch (images; each gives two views)
    epochs: int = 100  # passes over the training split
    max_steps: int = 0  # stop after this global step (schedule unchanged); 0 = no limit
    step_rule: StepRule = "epochs"  # E x N//B steps | reference: N x E // B + 1 (the tf ref)
    seed: int = 0  # every random draw is a pure function of it (and the epoch / step)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    # auto: bf16 where the device computes it natively, fp16 on older CUDA GPUs, else fp32
    precision: Precision = "auto"
    channels_last: bool = True  # NHWC memory layout for the convolutions
    compile: bool = False  # torch.compile the model
    log_every: int = 50  # steps per metrics.jsonl window line
    checkpoint_every: int = 0  # also checkpoint every N steps inside epochs; 0 = epoch ends only
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)
    ema: float = 0.0  # decay of the encoder's weight average, exported and evaluated; 0 = off


@dataclass
class Eval:
    every: int = -1  # online kNN monitor every N epochs of pretraining; -1 = 4 times a run; 0 = off
    knn_k: int = 200  # kNN protocol: neighbors that vote
    knn_temperature: float = 0.1  # kNN protocol: votes weighted exp(cosine / T)
    kmeans_init: int = 10  # k-means restarts (the best inertia is kept)
    batch_size: int = 512  # feature extraction batch
    subset: int = 0  # first N labeled train images for probe / kNN bank; 0 = all
    test_subset: int = 0  # first N test images; 0 = all
    baselines: bool = True  # also evaluate raw pixels and a randomly initialized encoder


@dataclass
class Probe:
    val_fraction: float = 0.1  # stratified part of the train split that chooses weight decay
    split: float = 0.0  # > 0: train on this fraction of the train split, test on the rest
    sgd_epochs: int = 100  # linear_sgd protocol (the tf reference's linear eval) ...
    sgd_batch_size: int = 512  # linear_sgd protocol batch
    sgd_lr: float = 0.1  # x B/256; SGD Nesterov momentum 0.9, cosine, no weight decay


@dataclass
class Finetune:
    labels: float = 0.1  # fraction of the labeled train split used (stratified)
    epochs: int = 30  # fine-tuning epochs over the labeled fraction
    lr: float = 0.05  # SGD, momentum 0.9, cosine, lr x B/256
    weight_decay: float = 5e-4  # fine-tuning SGD weight decay
    batch_size: int = 256  # fine-tuning batch


@dataclass
class Config:
    data: Data = field(default_factory=Data)
    augment: Augment = field(default_factory=Augment)
    model: Model = field(default_factory=Model)
    loss: Loss = field(default_factory=Loss)
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    probe: Probe = field(default_factory=Probe)
    finetune: Finetune = field(default_factory=Finetune)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples become lists) for YAML and checkpoints."""
        return plain(asdict(self))


# Each optimizer's lr (before lr_scaling) and weight decay, used where the config leaves them
# unset (None), so that switching or sweeping optim.name never hands one optimizer another's lr.
# lars: the reference's CIFAR recipe; sgd: the SGD recipe (91.7% linear on CIFAR-10); adam /
# adamw: the usual Adam step with L2 (adam) or decoupled (adamw) decay. The resolved values
# are what config.yaml saves.
OPTIM_DEFAULTS: dict[str, dict[str, float]] = {
    "lars": {"lr": 1.0, "weight_decay": 1e-4},
    "sgd": {"lr": 0.06, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 1e-6},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
}


def plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


__all__ = [
    "OPTIM_DEFAULTS", "RESNETS", "Augment", "Config", "Data", "DatasetName", "Eval", "Finetune",
    "Init", "Interpolation", "Loss", "LossName", "LrScaling", "Model", "Optim", "OptimName",
    "Precision", "Probe", "Shortcut", "Stem", "StepRule", "Stream", "Train", "plain",
]
