"""Fine-tuning methods, one module per family behind one interface (`base.FineTuneMethod`).

`get(name)` returns a method by the name a job spec uses (full, partial, lora, qlora, prompt_tuning,
p_tuning, prefix_tuning, adapter, ia3). Importing this package does not import torch; the method
modules are imported on first lookup.
"""

from tuneloop.train.methods.base import FineTuneMethod, PeftMethod, get, names, register

__all__ = ["FineTuneMethod", "PeftMethod", "get", "names", "register"]
