"""``qlora:nf4``: the way most people fine-tune a published model. The model is loaded in bitsandbytes NF4
(4-bit NormalFloat, blocks of 64, QLoRA's format), a PEFT LoRA adapter is added to every linear layer but the
output layer, the adapter is trained briefly on the same unrelated text as ``finetune:unrelated``
(:mod:`hubaudit.attacks.finetune`), and the NF4 model with its adapter (not merged) is evaluated, as the user
would run it. Both the 4-bit rounding and the fine-tune can bring knowledge back (INT4 in the QLoRA regime:
arXiv 2605.02196); the cell measures the two together.

Spec: ``qlora:nf4[:RANK[:STEPS]][:lr=X][:batch=B][:seed=S]``, default rank 16, 16 steps, ``lr=2e-4`` (QLoRA's
for its smaller models), ``batch=8``, ``seed=0``; LoRA alpha 16 and no dropout (QLoRA's alpha; dropout off so a
seed fixes the run), targets ``all-linear`` (PEFT: every linear layer except the output layer).

Precision: the frozen NF4 weights compute in the audit's compute dtype (bfloat16 where the device computes it
natively, else float32: :func:`hubaudit.modeling.choose_compute_dtype`); the adapter's weights are float32
(PEFT's default). Training backpropagates through bitsandbytes' dequantizing matmul; on a CPU bitsandbytes'
inference-only packed layout (AVX512-BF16) is held off while training and used again for the evaluation.

Runs on CPU at test scale (bitsandbytes 0.50 and PEFT 0.21, ``pip install 'hubaudit[attacks]'``); much faster
on a GPU, where a sweep places a model's cells when it has one.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Attack, AttackSpec, register
from .finetune import corpus_digest, corpus_rows, pad_id, parse_options, train_steps

FORMATS = ("nf4",)
DEFAULTS = {"rank": 16, "steps": 16, "lr": 2e-4, "batch": 8, "seed": 0}
LORA_ALPHA = 16
CORPUS = "unrelated"


def parse_qlora(spec: AttackSpec) -> dict:
    if not spec.args or spec.args[0].lower() not in FORMATS:
        raise SpecError(f"'{spec}': use qlora:nf4[:RANK[:STEPS]][:lr=X][:batch=B][:seed=S], e.g. qlora:nf4 or qlora:nf4:8:32")
    return {"format": "nf4", **parse_options(spec, DEFAULTS, ("rank", "steps"), 1)}


@register
class QloraAttack(Attack):
    name = "qlora"
    kind = "training"
    summary = "QLoRA: NF4 weights plus a LoRA adapter trained briefly on unrelated text, evaluated with the adapter"
    examples = ("qlora:nf4", "qlora:nf4:8:32", "qlora:nf4:16:16:lr=1e-4")
    requires = ("peft", "bitsandbytes")
    extra = "attacks"
    prefers_gpu = True
    noun = "QLoRA fine-tuning"
    report_note = ("qlora: the model in bitsandbytes NF4 with a LoRA adapter trained a few steps on the same unrelated "
                   "text, evaluated as a user runs it (4-bit weights + adapter)")

    def validate(self, spec: AttackSpec) -> None:
        parse_qlora(spec)

    def versions(self) -> dict[str, str]:
        out = super().versions()
        from importlib.metadata import version

        out["transformers"] = version("transformers")
        return out

    def cache_key(self, spec: AttackSpec, source) -> dict:
        return {"corpus": corpus_digest(CORPUS)}

    def build(self, source, spec: AttackSpec, rows=None):
        import bitsandbytes as bnb
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import BitsAndBytesConfig

        args = parse_qlora(spec)
        tok = source.tokenizer
        train = corpus_rows(tok, CORPUS)
        compute = source.compute_dtype()
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                                 bnb_4bit_compute_dtype=compute)
        model = source.load(quantization_config=cfg, device_map={"": source.device})
        quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        if not quantized:
            raise RuntimeError(f"{spec}: transformers loaded the model but converted no Linear layer to NF4")
        packed = {m: getattr(m, "support_avx512bf16_for_cpu", False) for m in quantized}
        for m in quantized:  # bitsandbytes' packed CPU layout has no backward: off while training
            m.support_avx512bf16_for_cpu = False
        lora = LoraConfig(r=args["rank"], lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        torch.manual_seed(args["seed"])  # the adapter's initialization
        peft_model = get_peft_model(model, lora)
        trainable, total = peft_model.get_nb_trainable_parameters()
        inner = peft_model.get_base_model()  # the model with LoRA layers in place: what PeftModel.forward runs
        max_len = getattr(inner.config, "max_position_embeddings", None)
        info = train_steps(inner, train, pad_id(tok), args["steps"], args["lr"], min(args["batch"], len(train)),
                           args["seed"], max_len)
        for m, was in packed.items():
            m.support_avx512bf16_for_cpu = was
        for p in inner.parameters():
            p.requires_grad_(False)
        inner.eval()
        settings = {**args, "corpus": CORPUS, "train_rows": len(train), "train_tokens": sum(map(len, train)), **info,
                    "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0, "target_modules": "all-linear",
                    "adapter_parameters": int(trainable), "parameters": int(total),
                    "linear_layers_quantized": len(quantized), "quant_type": "nf4", "double_quant": False,
                    "compute_dtype": str(compute).replace("torch.", ""), "adapter_dtype": "float32",
                    "evaluated_as": "NF4 weights + LoRA adapter, not merged", "device": source.device,
                    "optimizer": "AdamW(0.9, 0.999), constant lr, no weight decay",
                    "torch_threads": torch.get_num_threads()}
        return inner, settings
