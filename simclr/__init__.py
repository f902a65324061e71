"""SimCLR contrastive self-supervised learning on PyTorch."""

from simclr.clustering import clustering_metrics as kmeans_scores
from simclr.config import Config, build_config
from simclr.encoder_eval import evaluate_encoder
from simclr.errors import SimCLRError
from simclr.eval_run import evaluate, load_encoder
from simclr.loss import multi_nt_xent, nt_xent
from simclr.models import ProjectionHead, ResNet, SimCLR, build_model
from simclr.optim import LARS, lr_at
from simclr.protocols import extract_features, knn_accuracy, linear_probe
from simclr.train import pretrain

__all__ = [
    "LARS", "Config", "ProjectionHead", "ResNet", "SimCLR", "SimCLRError", "build_config",
    "build_model", "evaluate", "evaluate_encoder", "extract_features", "kmeans_scores",
    "knn_accuracy", "linear_probe", "load_encoder", "lr_at", "multi_nt_xent", "nt_xent",
    "pretrain",
]
__version__ = "0.1.0"
