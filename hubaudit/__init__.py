"""hubaudit: does your unlearned model stay unlearned when it is quantized?

Example:
    >>> import hubaudit
    >>> report = hubaudit.audit("unlearned/", reference="original/", specs="rtn:4,rtn:8")  # doctest: +SKIP
    >>> print(report.verdict.summary)                                                       # doctest: +SKIP
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting make small-model inference 100x slower on a loaded CPU
# (measured: 36 s instead of 0.4 s on 2 busy cores). Passive waiting costs nothing otherwise. This
# only takes effect if torch is not imported yet; set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Light imports only: torch, transformers and friends are imported inside the functions that use them.
from .attacks import AttackSpec  # noqa: E402
from .audit import DEFAULT_SPECS, DEFAULT_THRESHOLD, audit  # noqa: E402  (the function shadows the module name)
from .errors import HubauditError  # noqa: E402
from .forget import ForgetSet, load_forget_set  # noqa: E402
from .plan import AuditRequest  # noqa: E402
from .quant import QuantSpec  # noqa: E402  (the same class: a spec's grammar is every attack's)
from .results import AuditReport, CellResult, Verdict  # noqa: E402
from .sweep import sweep  # noqa: E402  (the function shadows the module name, as audit does)

__all__ = [
    "__version__", "audit", "AuditRequest", "DEFAULT_SPECS", "DEFAULT_THRESHOLD", "HubauditError", "ForgetSet",
    "load_forget_set", "AttackSpec", "QuantSpec", "AuditReport", "CellResult", "Verdict", "sweep",
]
