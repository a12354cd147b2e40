"""Prompt functions of lm-eval's standard tasks, taken from the installed lm-eval itself.

Our offline YAMLs read locally fetched files but must build the very same prompts as lm-eval's own
`hellaswag` and `winogrande` tasks, so they point (through `!function`) at these names, which are
lm-eval's functions, imported rather than rewritten.
"""

from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text

__all__ = ["hellaswag_preprocess", "hellaswag_process_docs", "winogrande_doc_to_choice",
           "winogrande_doc_to_target", "winogrande_doc_to_text"]
