"""Fine-tuning: one typed config, one recipe (full / LoRA / QLoRA), checkpoints and resume,
hyper-parameter search, several processes under torchrun."""

from slmops.train.config import FinetuneConfig, load_config, make_config
from slmops.train.finetune import FinetuneResult, TrainEvent, run
from slmops.train.search import SearchResult, TrialRecord, search

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "SearchResult",
    "TrainEvent",
    "TrialRecord",
    "load_config",
    "make_config",
    "run",
    "search",
]
