"""Distillation: a teacher answers your prompts (resumable, filtered synthetic data), a student
learns the answers through the fine-tuning recipe, and a report compares the two.

Example::

    from slmops.distill import make_generate_config, run_generate
    result = run_generate(make_generate_config(teacher="smollm2-135m-instruct", data="prompts.jsonl",
                                               task="classification", labels="billing,technical",
                                               output="synthetic.jsonl"))
"""

from slmops.distill.config import GenerateConfig, make_generate_config
from slmops.distill.generate import GenerateEvent, GenerateResult, run_generate

__all__ = ["GenerateConfig", "GenerateEvent", "GenerateResult", "make_generate_config", "run_generate"]
