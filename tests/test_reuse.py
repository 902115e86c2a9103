"""Nothing computed twice: the original's cells are computed once per (model identity, forget set)
across audits, so auditing several unlearned variants of one original pays for the original once."""

import shutil

import hubaudit
from factories import make_random_model


def test_variants_of_one_original_share_its_cells(random_world, tmp_path):
    store = tmp_path / "results.sqlite"
    variants = [random_world["model"], make_random_model(tmp_path / "variant2", seed=7, dtype="bfloat16")]
    # the original under another path: identity is the content, not the folder name
    moved = tmp_path / "original_copy"
    shutil.copytree(random_world["reference"], moved)
    seen = []
    for i, variant in enumerate(variants):
        cells = []
        report = hubaudit.audit(variant, reference=random_world["reference"] if i == 0 else moved,
                                forget=random_world["forget"], specs="rtn:4", store=store, progress=False,
                                metrics="knowmem_f,mia_auc", on_cell=cells.append)
        seen.append({(c.role, c.spec): c.reused for c in cells})
        assert report.verdict.label and all(c.status == "ok" for c in cells)
    first, second = seen
    assert not any(first.values())  # everything computed the first time
    assert second[("reference", "fp")] and second[("reference", "rtn:4")]  # the original: reused
    assert not second[("model", "fp")] and not second[("model", "rtn:4")]  # the new variant: computed
    # a reused cell still says how its text was generated back then
    assert {(c.role, c.spec): c.backend.get("decoding") for c in cells} == {
        (r, s): "fast" for r in ("model", "reference") for s in ("fp", "rtn:4")}
