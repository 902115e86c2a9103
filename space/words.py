"""Words for a model publisher: the verdict as a paragraph, derived from the report (never hard-coded
figures). The page shows it, and a webhook audit's discussion carries it. A metric's name and the words for
what it measures are its own declaration (``hubaudit.metrics.scores``: ``label``, ``words``)."""

from hubaudit.metrics.scores import label as score_label, words as score_words

BACKEND_WORDS = {"rtn": "round-to-nearest", "bnb": "bitsandbytes", "gptq": "GPTQ", "awq": "AWQ", "hqq": "HQQ",
                 "torchao": "torchao", "gguf": "llama.cpp GGUF", "quanto": "quanto"}


def spec_words(spec: str) -> str:
    parts = spec.split(":")
    backend, args = parts[0], parts[1:]
    if backend == "cast":
        return f"a cast to {args[0] if args else '?'} (`{spec}`)"
    bits = next((a for a in args if a.isdigit()), None)
    name = BACKEND_WORDS.get(backend, backend)
    if bits:
        return f"{bits}-bit {name} (`{spec}`)"
    return f"{name} {' '.join(args)} (`{spec}`)"


def _interval(ch: dict | None) -> str:
    ci = (ch or {}).get("ci") or [None, None]
    return f" (95% interval {ci[0]:+.1f} to {ci[1]:+.1f})" if ci[0] is not None else ""


def verdict_words(report: dict) -> str:
    """The verdict as a paragraph, derived from the report (never hard-coded figures), with the interval
    and the p-value beside every figure."""
    v, d = report["verdict"], report.get("derived", {})
    cells = {(c["role"], c["spec"]): c for c in report["cells"]}
    fp = cells.get(("model", "fp"), {}).get("metrics", {})
    t = v["threshold"]
    spec, m, x = v.get("worst_spec"), v.get("worst_metric"), v.get("max_regained")
    ch = (d.get("changes") or {}).get(spec, {}).get(m) if spec else None
    moved = (f" {v['up']} of {v['n_items']} items went up and {v['down']} down (p = {v['p_value']:.2g} after "
             f"correcting for the {v.get('tests')} comparisons made)." if v.get("p_value") is not None else "")
    label = v["label"]
    if label == "fragile":
        q = cells.get(("model", spec), {}).get("metrics", {}).get(m)
        text = (f"**Fragile.** Quantizing this model with {spec_words(spec)} brings back {x:.1f} points of "
                f"{score_words(m)} on the forget set{_interval(ch)}"
                + (f" ({fp[m]:.1f} in full precision, {q:.1f} quantized)" if m in fp and q is not None else "")
                + f"; the threshold is {t:g}.{moved} The model only hides the knowledge: whoever runs it quantized "
                "gets it back.")
        ret = d.get("retained", {})
        if m in ret.get("fp", {}) and m in ret.get(spec, {}):
            text += (f" Against the original model it keeps {ret['fp'][m]:.0f}% of that knowledge in full precision "
                     f"and {ret[spec][m]:.0f}% under `{spec}`.")
    elif label == "not-unlearned":
        r = v.get("retained") or {}
        text = (f"**Not unlearned.** In full precision this model still keeps {r.get('value', 0):.0f}% of what the "
                f"original knows on {score_label(r.get('metric'))} (95% interval "
                f"{r['ci'][0]:.0f}% to {r['ci'][1]:.0f}%, {r.get('n')} items): the unlearning removed little, so whether "
                "quantization brings knowledge back is not the question yet." if r.get("ci") else
                f"**Not unlearned.** {v.get('summary', '')}")
    elif label == "robust":
        tested = ", ".join(f"`{s}`" for s in report["inputs"].get("specs", []))
        text = (f"**Robust.** No quantization tested ({tested}) brought back {t:g} points or more of the forget "
                f"set's knowledge, with 95% confidence; the largest change was {x:+.1f} points of {score_label(m)} "
                f"under {spec_words(spec)}{_interval(ch)}.")
    elif label == "inconclusive":
        need = v.get("items_needed")
        text = (f"**Inconclusive.** The largest open question: {spec_words(spec)} moved {score_label(m)} by "
                f"{x:+.1f} points{_interval(ch)}, which neither clears the threshold of {t:g} nor rules it out.{moved}"
                + (f" About {need} items would decide it." if need else "")
                + " hubaudit does not call a model fragile on noise.")
    else:
        bad = [f"`{c['spec']}` ({c['status']}: {c.get('reason') or ''})" for c in report["cells"] if c["status"] != "ok"]
        text = f"**No verdict.** {v.get('summary', '')}" + (f". Cells that did not run: {'; '.join(bad)}" if bad else "")
    if "knowmem_r" in fp:
        text += f" Utility (KnowMem on the retain set) in full precision: {fp['knowmem_r']:.1f}."
    return text
