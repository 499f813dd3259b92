"""Fine-tuning: one typed config, one recipe (full / LoRA / QLoRA), checkpoints and resume."""

from slmops.train.config import FinetuneConfig, load_config, make_config
from slmops.train.finetune import FinetuneResult, TrainEvent, run

__all__ = ["FinetuneConfig", "FinetuneResult", "TrainEvent", "load_config", "make_config", "run"]
