"""The one config: its schema (`schema`), YAML and command-line values
(`yamlio`), and building plus checking it (`build`).
The bottom layer with `simclr.errors` and `simclr.runtime`: light (no torch), so
``simclr --help`` and a mistyped key stay fast.
"""

from simclr.config.build import (
    CUSTOM,
    RESNET_ONLY,
    advice,
    build_config,
    check_model_arch,
    diff,
    set_value,
    validate,
    views_checks,
)
from simclr.config.schema import (
    OPTIM_DEFAULTS,
    RESNETS,
    Augment,
    Config,
    Data,
    Eval,
    Finetune,
    Loss,
    Model,
    Optim,
    Probe,
    Train,
)
from simclr.config.yamlio import coerce, load_yaml, parse_value, save_yaml

__all__ = [
    "CUSTOM", "OPTIM_DEFAULTS", "RESNETS", "RESNET_ONLY", "Augment", "Config",
    "Data", "Eval", "Finetune", "Loss", "Model", "Optim", "Probe", "Train", "advice",
    "build_config", "check_model_arch", "coerce", "diff", "load_yaml", "parse_value", "save_yaml",
    "set_value", "validate", "views_checks",
]
