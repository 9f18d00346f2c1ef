"""The three TMF prompt tasks and the parameter groups each one trains (TMF §4.3, Eq. 9-11).

* easy: text only; trains the LLM's LoRA (Eq. 9, ``Phi_LLM``);
* medium: + behavior tokens ``[MT_b]``; also the behavior adaptor (Eq. 10, ``Psi_b``);
* hard: + item tokens ``[MT_i]``; also the fusion module and the item adaptor (Eq. 11, ``Psi_f``, ``Psi_i``).

Eq. 11 prints ``Psi_t``, which we read as ``Psi_i`` (the item adaptor), the only parameter group defined in
the text and otherwise absent from every loss (docs/training.md).
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("easy", "medium", "hard")

TRAINABLE_BY_TASK: dict[str, frozenset[str]] = {
    "easy": frozenset({"lora"}),  # Eq. 9: Phi_LLM
    "medium": frozenset({"lora", "behavior_adaptor"}),  # Eq. 10: Phi_LLM + Psi_b
    "hard": frozenset({"lora", "behavior_adaptor", "fusion", "item_adaptor"}),  # Eq. 11: + Psi_f + Psi_i
}


def trainable_parts(task: str) -> frozenset[str]:
    """Parameter groups that receive gradients under ``task`` (Eq. 9-11)."""
    if task not in TRAINABLE_BY_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return TRAINABLE_BY_TASK[task]
