"""Fine-tuning with the super weights in mind: guard them (freeze, clip, monitor), and train with
full fine-tuning, LoRA (peft) or Sparse Matrix Tuning (SMT), through the `transformers` Trainer.

>>> from superweight.finetune import FinetuneConfig, finetune, training_documents
>>> r = finetune(lm, FinetuneConfig(method="lora", guard="freeze", steps=20), training_documents("ptb-train"),
...              out="tuned/")  # doctest: +SKIP
"""

from superweight.finetune.data import training_documents, training_sources
from superweight.finetune.guard import GUARD_MODES, DriftReport, GuardConfig, SuperWeightGuard
from superweight.finetune.lora import LoRASettings
from superweight.finetune.smt import SMTConfig, SMTPlan, plan_smt, sparse_tuning
from superweight.finetune.train import GUARDS, METHODS, FinetuneConfig, FinetuneResult, finetune

__all__ = ["finetune", "FinetuneConfig", "FinetuneResult", "SuperWeightGuard", "GuardConfig", "DriftReport",
           "LoRASettings", "SMTConfig", "SMTPlan", "plan_smt", "sparse_tuning", "training_documents",
           "training_sources", "GUARD_MODES", "GUARDS", "METHODS"]
