"""Forget sets: one type (:class:`ForgetSet`) and a registry of readers (:mod:`.readers`)."""

from .readers import BUILTIN_SETS, DEFAULT_SET, FORMATS, builtin_path, load_forget_set, read_muse_dir
from . import tofu, wmdp  # noqa: F401,E402  (register the TOFU and WMDP formats)
from .types import PARTS, QA, Choice, ForgetSet, Passage, TofuQA

__all__ = [
    "BUILTIN_SETS", "DEFAULT_SET", "FORMATS", "PARTS", "QA", "Choice", "ForgetSet", "Passage", "TofuQA",
    "builtin_path", "load_forget_set", "read_muse_dir",
]
