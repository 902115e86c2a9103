"""Forget sets: one type (:class:`ForgetSet`) and a registry of readers (:mod:`.readers`)."""

from .readers import BUILTIN_SETS, DEFAULT_SET, FORMATS, builtin_path, load_forget_set, read_muse_dir
from .types import PARTS, QA, Choice, ForgetSet, Passage

__all__ = [
    "BUILTIN_SETS", "DEFAULT_SET", "FORMATS", "PARTS", "QA", "Choice", "ForgetSet", "Passage",
    "builtin_path", "load_forget_set", "read_muse_dir",
]
