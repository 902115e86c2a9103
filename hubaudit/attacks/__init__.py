"""Recovery attacks behind spec strings: quantization (``rtn:4``, ``bnb:nf4``, ``file:...``; the backends in
:mod:`hubaudit.quant`), magnitude pruning (``prune:0.2``), relearning (``relearn:steps=20``), benign
fine-tuning on unrelated text (``finetune:unrelated``, ``qlora:nf4``) and the white-box attacks
(``ablate:direction``, ``probe:logit-lens``).
See :mod:`hubaudit.attacks.base` for what an attack is and how to add one."""

from .base import (ATTACKS, FULL_PRECISION, KINDS, Attack, AttackSpec, RowsRequest, TrainingRows, all_attacks,
                   get_attack, parse_specs, register, spec_family, spec_kind, unknown_attack)

__all__ = ["ATTACKS", "FULL_PRECISION", "KINDS", "Attack", "AttackSpec", "RowsRequest", "TrainingRows",
           "all_attacks", "get_attack", "parse_specs", "register", "spec_family", "spec_kind", "unknown_attack"]
