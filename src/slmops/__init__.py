"""slmops: the whole life of a small language model on hardware you own.

The Python API uses the CLI's names::

    from slmops import ModelStore, open_engine, pull, GenerationRequest, GenerationParams

    store = ModelStore()                      # $SLMOPS_HOME or ~/.slmops
    pull("smollm2-135m-instruct", store)      # idempotent
    with open_engine("smollm2-135m-instruct", store) as engine:
        [answer] = engine.generate([GenerationRequest.chat("What is the capital of France?")])
"""

import logging

from slmops.engines import (
    Engine,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    Message,
    StreamChunk,
    open_engine,
)
from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.models.catalog import CATALOG, DEFAULT_MODEL
from slmops.models.pull import pull
from slmops.models.store import ModelRecord, ModelStore

__version__ = "0.1.0"

# bitsandbytes, which peft and transformers import whenever it is installed, logs on import that an
# optional CPU kernel package is missing: a hint for its developers, noise on every LoRA run's stderr.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "Engine",
    "GenerationParams",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "ModelRecord",
    "ModelStore",
    "SlmopsError",
    "StreamChunk",
    "import_model",
    "open_engine",
    "pull",
]
