"""SimCLR contrastive self-supervised learning on PyTorch."""

from simclr.config import Config, build_config
from simclr.errors import SimCLRError
from simclr.eval_run import evaluate, load_encoder
from simclr.loss import nt_xent
from simclr.models import ProjectionHead, ResNet, SimCLR, build_model
from simclr.optim import LARS, lr_at
from simclr.train import pretrain

__all__ = [
    "LARS", "Config", "ProjectionHead", "ResNet", "SimCLR", "SimCLRError", "build_config",
    "build_model", "evaluate", "load_encoder", "lr_at", "nt_xent", "pretrain",
]
__version__ = "0.1.0"
