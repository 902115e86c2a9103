"""``gguf:TYPE``: the weights a llama.cpp user gets from ``llama-quantize model.gguf out.gguf TYPE``.

Most people who run local models run GGUF files, so this backend reproduces what llama.cpp's
quantizer writes into such a file, tensor by tensor, and evaluates the dequantized weights with the
same metrics as every other cell.

Why dequantized weights, not llama-cpp-python
---------------------------------------------
The audit compares cells; a difference must come from the weights, not from a second inference
stack. Dequantizing each block (with gguf-py, whose dequantizers mirror ggml's) gives exactly the
values stored in the file, and the metrics then run through the same batched transformers code,
tokenizer and greedy decoding as the full-precision cell. llama.cpp would in addition round the
activations to 8 bits inside its matmuls (Q8_0/Q8_K dot products) and run its own tokenizer and
sampler; those are runtime effects of one engine, not of the weights. llama-cpp-python also has no
Linux wheel on PyPI (it compiles llama.cpp, minutes) and would need a GGUF conversion per cell.

Types (llama.cpp file types, as given to ``llama-quantize``)
-----------------------------------------------------------
gguf 0.19's numpy quantizer (``gguf.quants.quantize``) implements Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
TQ1_0, TQ2_0, MXFP4 (and BF16) but none of the k-quants (Q2_K...Q6_K: dequantization only). The
k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) are implemented here in numpy, following llama.cpp's
reference quantizers (``quantize_row_q{2,3,4,5,6}_K_ref`` in ggml-quants.c, which ``llama-quantize``
uses when no importance matrix is given), packed into GGUF blocks and decoded by gguf-py. Float32
arithmetic and sums in the C loops' order make the blocks byte-for-byte those of ggml's
``ggml_quantize_chunk``, and whole files match ``llama-quantize`` (types and values of every tensor,
for Q2_K, Q3_K_S/M/L, Q4_0, Q4_1, Q4_K_S/M, Q5_1, Q5_K_S/M, Q6_K, Q8_0, checked against llama.cpp as
vendored in llama-cpp-python 0.3.36; tests/test_backends.py keeps hashes of ggml's blocks). Not
offered: Q2_K_S (llama.cpp requires an importance matrix for it), the IQ types (need one too, and gguf-py
cannot quantize them), MXFP4 (llama.cpp only offers MXFP4_MOE, which turns every dense tensor into Q8_0).

Per-tensor mix (``llama_tensor_get_type`` in llama.cpp's src/llama-quant.cpp), for the tensors a
transformers causal LM has:

- ``output.weight`` (``lm_head``): Q6_K, or Q8_0 when the type is Q8_0 or the row length is not a
  multiple of the type's block; with tied embeddings the token embedding takes this rule.
- ``token_embd`` (``embed_tokens``): the file type (Q4_K for TQ1_0/TQ2_0).
- ``attn_v`` (``v_proj``; fused qkv counts as attn_v): Q4_K_M/Q5_K_M -> Q6_K on the layers where
  ``use_more_bits(i, n)`` holds (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2); Q4_K_S -> Q5_K on the
  first 4 layers; Q3_K_M -> Q5_K on the first 2, Q4_K after; Q3_K_L -> Q5_K; Q2_K -> Q3_K (Q4_K
  when there are 4 or more query heads per key/value head).
- ``ffn_down`` (``down_proj``): Q4_K_M/Q5_K_M -> Q6_K where ``use_more_bits``; Q4_K_S -> Q5_K on
  the first n/8 layers; Q3_K_M -> Q5_K on the first n/16, Q4_K after; Q3_K_L -> Q5_K; Q2_K -> Q3_K.
- ``attn_output`` (``o_proj``): Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K.
- everything else (q, k, gate, up): the file type.
- fallback when a row length is not a multiple of the type's block (256 for k-quants): Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/TQ -> Q4_0, and F16 when even that does not fit. Tiny test models
  (hidden size 64 or 128) therefore get Q5_0/Q8_0 where a real model gets Q4_K/Q6_K: the settings
  list the type of every tensor.
- not applied (no such tensors or models here): the 70B, 8-expert, MoE, Falcon and other
  architecture-specific rules.

Norms and biases stay in float32, as in the file. Row permutations that the converter applies to
q/k weights for rotary embeddings do not change blocks (blocks lie within rows), so quantizing the
transformers weights row by row gives the same values.

Spec grammar: ``gguf:TYPE[:pure]`` -- ``pure`` is ``llama-quantize --pure``: every tensor in TYPE, no mix
(the fallback for incompatible shapes still applies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SpecError
from .base import Backend, QuantSpec, register

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

QK_K = 256
GROUP_MAX_EPS = 1e-15

# llama.cpp file type -> the tensor type it starts from
FILE_TYPES = {
    "Q8_0": "Q8_0", "Q5_1": "Q5_1", "Q5_0": "Q5_0", "Q4_1": "Q4_1", "Q4_0": "Q4_0",
    "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K", "TQ2_0": "TQ2_0", "TQ1_0": "TQ1_0",
}
BLOCK = {"Q8_0": 32, "Q5_1": 32, "Q5_0": 32, "Q4_1": 32, "Q4_0": 32, "Q6_K": QK_K, "Q5_K": QK_K, "Q4_K": QK_K,
         "Q3_K": QK_K, "Q2_K": QK_K, "TQ2_0": QK_K, "TQ1_0": QK_K, "F16": 1}
BITS = {"Q8_0": 8.5, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_0": 4.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5,
        "Q3_K": 3.4375, "Q2_K": 2.625, "TQ2_0": 2.0625, "TQ1_0": 1.6875, "F16": 16.0}  # bits per weight, scales included
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q3_K": "Q4_0", "Q2_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0"}

# transformers module name (last part) -> llama.cpp tensor category
CATEGORIES = {
    "lm_head": "output", "embed_out": "output", "embed_tokens": "token_embd", "wte": "token_embd",
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "qkv_proj": "attn_qkv", "query_key_value": "attn_qkv", "c_attn": "attn_qkv", "Wqkv": "attn_qkv",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down", "dense_4h_to_h": "ffn_down",
    "dense_h_to_4h": "ffn_up", "c_fc": "ffn_up", "fc1": "ffn_up", "fc2": "ffn_down", "w1": "ffn_gate",
    "w3": "ffn_up", "w2": "ffn_down",
}


def parse_gguf(spec: QuantSpec) -> tuple[str, bool]:
    if not spec.args:
        raise SpecError(f"'{spec}' needs a llama.cpp type, e.g. gguf:Q4_K_M ({', '.join(FILE_TYPES)})")
    ftype = spec.args[0].upper()
    if ftype not in FILE_TYPES:
        known = ", ".join(FILE_TYPES)
        if ftype == "Q2_K_S":
            raise SpecError(f"'{spec}': llama.cpp makes Q2_K_S only with an importance matrix, which this backend does "
                            f"not compute; available: {known}")
        raise SpecError(f"'{spec}': unknown GGUF type '{spec.args[0]}'; available: {known}")
    pure = False
    for opt in spec.args[1:]:
        if opt.lower() == "pure":
            pure = True
        else:
            raise SpecError(f"'{spec}': unknown option '{opt}'; the only option is pure (no per-tensor mix)")
    return ftype, pure


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for which layers get more bits (C integer division)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_types(tensors: list[tuple[str, str, int]], ftype: str, pure: bool = False, tied: bool = False,
                 n_gqa: int = 1) -> dict[str, str]:
    """The tensor type llama.cpp gives each tensor.

    Args:
        tensors: (name, category, row length) in file order; category as in :data:`CATEGORIES`
            values, or "other".
        ftype: a key of :data:`FILE_TYPES`.
        pure: no per-tensor mix (``--pure``).
        tied: the token embedding is also the output matrix.
        n_gqa: attention heads per key/value head (Q2_K gives attn_v Q4_K when it is 4 or more).

    Raises:
        SpecError: a row length that no type can take (llama.cpp refuses such a tensor too).
    """
    default = FILE_TYPES[ftype]
    n_attn_v = sum(1 for _, c, _ in tensors if c in ("attn_v", "attn_qkv"))
    n_ffn_down = sum(1 for _, c, _ in tensors if c == "ffn_down")
    i_attn_v = i_ffn_down = 0
    out: dict[str, str] = {}
    for name, cat, ncols in tensors:
        t = default
        if not pure:
            if cat == "output" or (tied and cat == "token_embd"):
                if ncols % BLOCK[default]:
                    t = "Q8_0"
                elif default != "Q8_0":
                    t = "Q6_K"
            elif cat == "token_embd":
                if ftype in ("TQ1_0", "TQ2_0"):
                    t = "Q4_K"
            elif cat in ("attn_v", "attn_qkv"):
                if ftype == "Q2_K":
                    t = "Q4_K" if n_gqa >= 4 else "Q3_K"
                elif ftype == "Q3_K_M":
                    t = "Q5_K" if i_attn_v < 2 else "Q4_K"
                elif ftype == "Q3_K_L":
                    t = "Q5_K"
                elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
                    t = "Q6_K"
                elif ftype == "Q4_K_S" and i_attn_v < 4:
                    t = "Q5_K"
                i_attn_v += 1
            elif cat == "ffn_down":
                if ftype == "Q2_K":
                    t = "Q3_K"
                elif ftype == "Q3_K_M":
                    t = "Q5_K" if i_ffn_down < n_ffn_down // 16 else "Q4_K"
                elif ftype == "Q3_K_L":
                    t = "Q5_K"
                elif ftype in ("Q4_K_M", "Q5_K_M"):
                    if use_more_bits(i_ffn_down, n_ffn_down):
                        t = "Q6_K"
                elif ftype == "Q4_K_S" and i_ffn_down < n_ffn_down // 8:
                    t = "Q5_K"
                i_ffn_down += 1
            elif cat == "attn_output":
                t = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, t)
        if ncols % BLOCK[t]:
            if t not in FALLBACK:
                raise SpecError(f"gguf:{ftype}: tensor {name} has rows of {ncols} values, not a multiple of {BLOCK[t]}; "
                                f"llama.cpp cannot quantize it to {t} either")
            t = FALLBACK[t]
            if ncols % BLOCK[t]:
                t = "F16"
        out[name] = t
    return out


# -- llama.cpp's reference k-quant quantizers, vectorised over blocks ----------------------------------------


def _seqsum(a):
    """Row sums accumulated left to right in float32, as the C loops do (numpy's sum is pairwise, which
    rounds differently and flips near-ties in the searches below)."""
    import numpy as np

    return np.cumsum(a, axis=1, dtype=np.float32)[:, -1]


def _make_qkx2(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """``make_qkx2_quants`` over rows of ``x`` [N, n]: returns (scale [N], the_min [N], L [N, n] uint8)."""
    import numpy as np

    f = np.float32
    x = x.astype(f)
    w = w.astype(f)
    mn = np.minimum(x.min(axis=1), f(0))
    mx = x.max(axis=1)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    flat = mx == mn
    rng = np.where(flat, f(1), mx - mn).astype(f)
    iscale = (f(nmax) / rng).astype(f)
    scale = (f(1) / iscale).astype(f)
    L = np.clip(np.rint(iscale[:, None] * (x - mn[:, None])), 0, nmax).astype(f)

    def err(s, m, q):
        diff = s[:, None] * q + m[:, None] - x
        return _seqsum(w * (np.abs(diff) if use_mad else diff * diff))

    best = err(scale, mn, L)
    for step in range(nstep + 1):
        # as in C, the search is centred on the best (min) found so far, not on the first one
        rng = np.where(flat, f(1), mx - mn).astype(f)
        isc = ((f(rmin) + f(rdelta) * f(step) + f(nmax)) / rng).astype(f)
        Laux = np.clip(np.rint(isc[:, None] * (x - mn[:, None])), 0, nmax).astype(f)
        sum_l = _seqsum(w * Laux)
        sum_l2 = _seqsum(w * Laux * Laux)
        sum_xl = _seqsum(w * Laux * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, f(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, f(0), this_min).astype(f)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, f(1)), this_scale).astype(f)
        cur = err(this_scale, this_min, Laux)
        upd = ok & (cur < best) & ~flat
        L = np.where(upd[:, None], Laux, L)
        best = np.where(upd, cur, best)
        scale = np.where(upd, this_scale, scale).astype(f)
        mn = np.where(upd, this_min, mn).astype(f)
    scale = np.where(flat, f(0), scale)
    L = np.where(flat[:, None], f(0), L)
    return scale.astype(f), (-mn).astype(f), L.astype(np.uint8)


def _make_qx_rmse1(x, nmax: int):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` over rows: (scale [N], L [N, n] in 0..2*nmax-1)."""
    import numpy as np

    f = np.float32
    x = x.astype(f)
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(x.shape[0]), idx]
    zero = np.abs(mx) < GROUP_MAX_EPS
    mxs = np.where(zero, f(1), mx).astype(f)
    w = x * x

    def fit(iscale):
        lq = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1).astype(f)
        return lq, _seqsum(w * x * lq), _seqsum(w * lq * lq)

    lq, sumlx, suml2 = fit((f(-nmax) / mxs).astype(f))
    L = lq + nmax
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, f(1)), f(0)).astype(f)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lq, slx, sl2 = fit((-(f(nmax) + f(0.1) * f(step)) / mxs).astype(f))
        upd = (sl2 > 0) & (slx * slx > best * sl2)
        L = np.where(upd[:, None], lq + nmax, L)
        scale = np.where(upd, slx / np.where(sl2 > 0, sl2, f(1)), scale).astype(f)
        best = np.where(upd, scale * slx, best).astype(f)
    scale = np.where(zero, f(0), scale)
    L = np.where(zero[:, None], f(0), L)
    return scale.astype(f), L.astype(np.uint8)


def _pack_scale_min_k4(ls, lm):
    """The 12-byte 6-bit scale/min layout of Q4_K and Q5_K; ls, lm: [nb, 8] uint8 (0..63)."""
    import numpy as np

    s = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return s


def _quantize_qk_min(blocks, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of ``quantize_row_q4_K_ref`` / ``q5_K_ref``: returns d, dmin (fp16 bytes), scales, L [nb, 256]."""
    import numpy as np

    f = np.float32
    nb = blocks.shape[0]
    x = blocks.reshape(nb * 8, 32).astype(f)
    av_x = np.sqrt(_seqsum(x * x) / f(32)).astype(f)
    w = av_x[:, None] + np.abs(x)
    scales, mins, L = _make_qkx2(x, w, nmax, rmin, rdelta, nstep, False)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32).astype(np.int32)
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, f(63) / np.where(max_scale > 0, max_scale, f(1)), f(0)).astype(f)
    inv_min = np.where(max_min > 0, f(63) / np.where(max_min > 0, max_min, f(1)), f(0)).astype(f)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d = (max_scale / f(63)).astype(np.float16)
    dmin = (max_min / f(63)).astype(np.float16)
    dq = d.astype(f)[:, None] * ls.astype(f)
    dm = dmin.astype(f)[:, None] * lm.astype(f)
    xb = blocks.reshape(nb, 8, 32).astype(f)
    safe = np.where(dq == 0, f(1), dq)
    newL = np.clip(np.rint((xb + dm[..., None]) / safe[..., None]), 0, nmax).astype(np.int32)
    L = np.where((dq == 0)[..., None], L, newL)
    return d, dmin, _pack_scale_min_k4(ls, lm), L.reshape(nb, QK_K)


def quantize_q4_k(blocks):
    """``quantize_row_q4_K_ref``: blocks [nb, 256] float32 -> [nb, 144] uint8 (d, dmin, scales, qs)."""
    import numpy as np

    d, dmin, scales, L = _quantize_qk_min(blocks, 15, -1.0, 0.1, 20)
    nb = L.shape[0]
    Lc = L.reshape(nb, 4, 2, 32).astype(np.uint8)
    qs = (Lc[:, :, 0, :] | (Lc[:, :, 1, :] << 4)).reshape(nb, 128)
    return np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8), scales, qs], axis=1)


def quantize_q5_k(blocks):
    """``quantize_row_q5_K_ref``: blocks [nb, 256] -> [nb, 176] uint8 (d, dmin, scales, qh, qs)."""
    import numpy as np

    d, dmin, scales, L = _quantize_qk_min(blocks, 31, -0.5, 0.1, 15)
    nb = L.shape[0]
    Lc = L.reshape(nb, 4, 2, 32).astype(np.uint8)  # chunk n: sub-blocks 2n (low nibble) and 2n+1 (high nibble)
    ql = ((Lc[:, :, 0, :] & 0xF) | ((Lc[:, :, 1, :] & 0xF) << 4)).reshape(nb, 128)
    hi = (L.reshape(nb, 8, 32) >> 4).astype(np.uint8)  # bit 4 of sub-block s goes to bit s of qh
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for s in range(8):
        qh |= hi[:, s, :] << s
    return np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8), scales, qh, ql], axis=1)


def quantize_q6_k(blocks):
    """``quantize_row_q6_K_ref``: blocks [nb, 256] -> [nb, 210] uint8 (ql, qh, scales, d)."""
    import numpy as np

    f = np.float32
    nb = blocks.shape[0]
    x = blocks.reshape(nb * 16, 16).astype(f)
    scales, L = _make_qx_rmse1(x, 32)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16).astype(np.int32)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = (f(-128) / np.where(zero, f(1), max_scale)).astype(f)
    d = (f(1) / iscale).astype(np.float16)
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int32)
    dq = d.astype(f)[:, None] * sc.astype(f)
    xb = blocks.reshape(nb, 16, 16).astype(f)
    safe = np.where(dq == 0, f(1), dq)
    newL = np.clip(np.rint(xb / safe[..., None]), -32, 31).astype(np.int32) + 32
    L = np.where((dq == 0)[..., None], L, newL).reshape(nb, 2, 4, 32).astype(np.uint8)  # [half, quarter, l]
    ql = np.concatenate([L[:, :, 0, :] & 0xF | ((L[:, :, 2, :] & 0xF) << 4),
                         L[:, :, 1, :] & 0xF | ((L[:, :, 3, :] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0, :] >> 4) | ((L[:, :, 1, :] >> 4) << 2) | ((L[:, :, 2, :] >> 4) << 4)
          | ((L[:, :, 3, :] >> 4) << 6)).reshape(nb, 64)
    sc8 = sc.astype(np.int8).view(np.uint8)
    out = np.concatenate([ql, qh, sc8, d.reshape(nb, 1).view(np.uint8)], axis=1)
    out[zero] = 0
    return out


def _pack_2bit(L):
    """Q2_K/Q3_K low bits: byte l of each 128-value half holds values l, l+32, l+64, l+96 (2 bits each)."""
    import numpy as np

    nb = L.shape[0]
    Lh = L.reshape(nb, 2, 4, 32).astype(np.uint8)
    return (Lh[:, :, 0] | (Lh[:, :, 1] << 2) | (Lh[:, :, 2] << 4) | (Lh[:, :, 3] << 6)).reshape(nb, 64)


def quantize_q2_k(blocks):
    """``quantize_row_q2_K_ref``: blocks [nb, 256] -> [nb, 84] uint8 (scales, qs, d, dmin)."""
    import numpy as np

    f = np.float32
    nb = blocks.shape[0]
    x = blocks.reshape(nb * 16, 16).astype(f)
    scales, mins, L = _make_qkx2(x, np.abs(x), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(nb, 16), mins.reshape(nb, 16), L.reshape(nb, 16, 16).astype(np.int32)
    max_scale = np.maximum(scales.max(axis=1), f(0))
    max_min = np.maximum(mins.max(axis=1), f(0))
    has_s, has_m = max_scale > 0, max_min > 0
    isc = np.where(has_s, f(15) / np.where(has_s, max_scale, f(1)), f(0)).astype(f)
    imn = np.where(has_m, f(15) / np.where(has_m, max_min, f(1)), f(0)).astype(f)
    ls = np.where(has_s[:, None], np.rint(isc[:, None] * scales), 0).astype(np.int32)
    lm = np.where(has_m[:, None], np.rint(imn[:, None] * mins), 0).astype(np.int32)
    sc = ((ls & 0xFF) | (lm << 4)).astype(np.uint8)  # as C: uint8 stores, mins in the high nibble
    d = np.where(has_s, max_scale / f(15), f(0)).astype(np.float16)
    dmin = np.where(has_m, max_min / f(15), f(0)).astype(np.float16)
    dq = d.astype(f)[:, None] * (sc & 0xF).astype(f)
    dm = dmin.astype(f)[:, None] * (sc >> 4).astype(f)
    xb = blocks.reshape(nb, 16, 16).astype(f)
    safe = np.where(dq == 0, f(1), dq)
    newL = np.clip(np.rint((xb + dm[..., None]) / safe[..., None]), 0, 3).astype(np.int32)
    L = np.where((dq == 0)[..., None], L, newL).reshape(nb, QK_K)
    return np.concatenate([sc, _pack_2bit(L), d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8)], axis=1)


def _make_q3(x, nmax: int):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` over rows: (scale [N], L [N, n] in 0..2*nmax-1)."""
    import numpy as np

    f = np.float32
    x = x.astype(f)
    N, n = x.shape
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(N), idx]
    zero = np.abs(mx) < GROUP_MAX_EPS
    iscale = (f(-nmax) / np.where(zero, f(1), mx)).astype(f)
    L = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1).astype(f)
    w = x * x
    sumlx = _seqsum(w * x * L)
    suml2 = _seqsum(w * L * L)
    for _ in range(5):  # a row with no change in a pass would not change in the next one either
        for i in range(n):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new_l = np.clip(np.rint(xi * sl2 / np.where(pos, slx, f(1))), -nmax, nmax - 1).astype(f)
            cand = pos & (new_l != li)
            slx2 = slx + wi * xi * new_l
            sl22 = sl2 + wi * new_l * new_l
            better = cand & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(better, new_l, li)
            sumlx = np.where(better, slx2, sumlx).astype(f)
            suml2 = np.where(better, sl22, suml2).astype(f)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, f(1)), f(0)).astype(f)
    scale = np.where(zero, f(0), scale)
    L = np.where(zero[:, None], f(-nmax), L) + nmax
    return scale, L.astype(np.int32)


def quantize_q3_k(blocks):
    """``quantize_row_q3_K_ref``: blocks [nb, 256] -> [nb, 110] uint8 (hmask, qs, scales, d)."""
    import numpy as np

    f = np.float32
    nb = blocks.shape[0]
    scales, L = _make_q3(blocks.reshape(nb * 16, 16), 4)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    has = max_scale != 0
    iscale = np.where(has, f(-32) / np.where(has, max_scale, f(1)), f(0)).astype(f)
    l6 = (np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32).astype(np.int32)
    l6 = np.where(has[:, None], l6, 0)
    sc = np.zeros((nb, 12), dtype=np.int32)
    sc[:, 0:8] = l6[:, 0:8] & 0xF
    sc[:, 0:8] |= (l6[:, 8:16] & 0xF) << 4
    for j in range(16):
        sc[:, 8 + j % 4] |= (l6[:, j] >> 4) << (2 * (j // 4))
    sc = sc.astype(np.uint8)
    d = np.where(has, f(1) / np.where(has, iscale, f(1)), f(0)).astype(np.float16)
    dq = d.astype(f)[:, None] * (l6 - 32).astype(f)
    xb = blocks.reshape(nb, 16, 16).astype(f)
    safe = np.where(dq == 0, f(1), dq)
    newL = (np.clip(np.rint(xb / safe[..., None]), -4, 3) + 4).astype(np.int32)
    L = np.where((dq == 0)[..., None], L, newL).reshape(nb, QK_K)
    high = L > 3
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for k in range(8):  # value j: byte j % 32, bit j // 32
        hmask |= (high[:, k * 32:(k + 1) * 32].astype(np.uint8) << k)
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), sc, d.reshape(nb, 1).view(np.uint8)], axis=1)


K_QUANTIZERS = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k,
                "Q6_K": quantize_q6_k}


def quantize_dequantize(w: "np.ndarray", qtype: str) -> "np.ndarray":
    """What a GGUF file of type ``qtype`` stores for the float32 matrix ``w`` [rows, cols], decoded to float32."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype == "F16":
        return w.astype(np.float16).astype(np.float32)
    gtype = GGMLQuantizationType[qtype]
    if qtype in K_QUANTIZERS:
        rows, cols = w.shape
        packed = K_QUANTIZERS[qtype](w.reshape(-1, QK_K)).reshape(rows, -1)
    else:
        packed = quants.quantize(w, gtype)
    return quants.dequantize(packed, gtype).reshape(w.shape).astype(np.float32)


@register
class GGUFBackend(Backend):
    """llama.cpp's GGUF quantization types, dequantized (see the module docstring for why)."""

    name = "gguf"
    summary = "llama.cpp GGUF types (Q8_0, Q4_0, Q4_K_M...) with llama.cpp's per-tensor mix, evaluated dequantized"
    examples = ("gguf:Q8_0", "gguf:Q4_0", "gguf:Q4_K_M", "gguf:Q5_K_M", "gguf:Q6_K", "gguf:Q4_K_M:pure")
    requires = ("gguf", "numpy")
    extra = "gguf"

    def validate(self, spec: QuantSpec) -> None:
        parse_gguf(spec)

    def apply(self, model, spec: QuantSpec):
        import torch

        ftype, pure = parse_gguf(spec)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = emb is not None and out_emb is not None and out_emb.weight is emb.weight
        entries: list[tuple[str, torch.nn.Module, str]] = []
        for name, mod in model.named_modules():
            last = name.split(".")[-1]
            if mod is emb:
                entries.append((name, mod, "token_embd"))
            elif isinstance(mod, torch.nn.Linear):
                if tied and mod is out_emb:
                    continue  # the same matrix as the token embedding, quantized once under its rule
                cat = "output" if mod is out_emb else CATEGORIES.get(last, "other")
                entries.append((name, mod, cat))
        cfg = getattr(model, "config", None)
        heads = getattr(cfg, "num_attention_heads", None) or 1
        n_gqa = heads // (getattr(cfg, "num_key_value_heads", None) or heads)
        types = tensor_types([(n, c, m.weight.shape[1]) for n, m, c in entries], ftype, pure, tied, n_gqa)
        counts: dict[str, int] = {}
        with torch.no_grad():
            for name, mod, _ in entries:
                w = mod.weight
                deq = quantize_dequantize(w.detach().float().cpu().numpy(), types[name])
                w.copy_(torch.from_numpy(deq).to(device=w.device, dtype=w.dtype))
                counts[types[name]] = counts.get(types[name], 0) + 1
        n = sum(counts.values())
        numel = sum(m.weight.numel() for _, m, _ in entries)
        bpw = sum(BITS[types[nm]] * m.weight.numel() for nm, m, _ in entries) / max(1, numel)
        return model, {
            "file_type": ftype,
            "pure": pure,
            "tensor_types": types,
            "type_counts": counts,
            "tensors_quantized": n,
            "bits_per_weight_quantized_tensors": round(bpw, 3),
            "tied_embeddings": tied,
            "n_gqa": n_gqa,
            "evaluated": "dequantized weights (the file's block values) in the model's dtype "
                         + ("(float32: exact)" if entries and entries[0][1].weight.dtype == torch.float32
                            else "(rounded to that dtype)") + "; activations not rounded",
            "k_quants": "numpy port of llama.cpp's quantize_row_q{4,5,6}_K_ref (no imatrix); others gguf.quants.quantize",
            "call": "gguf.quants.quantize / dequantize (gguf-py)",
        }


# -- writing a GGUF file ------------------------------------------------------------------------------------

# transformers Llama module -> llama.cpp tensor name (blk.N. prefix for the decoder layers)
_LLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute_qk(w: "np.ndarray", n_head: int) -> "np.ndarray":
    """llama.cpp's converter reorders q/k rows for its rotary layout (``permute`` in convert_hf_to_gguf.py);
    transformers' GGUF loader undoes it. Rows move whole, so blocks (which lie within rows) are unchanged."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path, ftype: str = "Q4_0", pure: bool = False, name: str | None = None):
    """Write a Llama-architecture transformers model as the GGUF file ``llama-quantize`` would make of
    type ``ftype`` (the same per-tensor mix and blocks as the ``gguf:`` spec evaluates), with a
    byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) and the chat template, as llama.cpp's
    converter writes them. For tests and demos: a published artifact to audit with ``file:PATH.gguf``.

    Returns:
        The path and the tensor types written ({transformers module name: GGUF type}).

    Raises:
        SpecError: not a Llama model, or a type this backend cannot write.
    """
    from pathlib import Path

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType, quants

    ftype, pure = parse_gguf(QuantSpec("gguf", (ftype, *(("pure",) if pure else ()))))
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise SpecError(f"write_gguf writes Llama-architecture models; this one is {getattr(cfg, 'model_type', '?')}")
    # the types the gguf: backend gives each tensor
    emb, out_emb = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb.weight
    modules = dict(model.named_modules())
    linear = [(n, m) for n, m in modules.items() if m is emb or (hasattr(m, "weight") and m.weight.dim() == 2
                                                                  and not (tied and m is out_emb))]
    cats = [(n, "token_embd" if m is emb else "output" if m is out_emb else CATEGORIES.get(n.split(".")[-1], "other"),
             m.weight.shape[1]) for n, m in linear]
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    types = tensor_types(cats, ftype, pure, tied, n_head // n_kv)

    w = GGUFWriter(str(path), "llama")
    w.add_name(name or getattr(cfg, "_name_or_path", None) or "model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    w.add_rope_freq_base(float(rope))
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(LlamaFileType[f"MOSTLY_{ftype}"]))
    w.add_quantization_version(2)
    # tokenizer: byte-level BPE as llama.cpp's converter writes it
    import json

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges", [])]
    tokens = tokenizer.convert_ids_to_tokens(list(range(cfg.vocab_size)))
    special = set(tokenizer.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)])
    w.add_token_types([int(TokenType.CONTROL if i in special else TokenType.NORMAL) for i in range(len(tokens))])
    w.add_token_merges(merges)
    for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id)):
        if tid is not None:
            getattr(w, f"add_{key}_token_id")(tid)
    bos_added = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    w.add_add_bos_token(bool(bos_added))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        w.add_chat_template(tokenizer.chat_template)

    def gguf_name(hf: str) -> str:
        if hf.endswith("embed_tokens"):
            return "token_embd"
        if hf == "lm_head":
            return "output"
        if hf.endswith("model.norm"):
            return "output_norm"
        parts = hf.split(".")  # model.layers.N.<rest>
        return f"blk.{parts[2]}.{_LLAMA_NAMES['.'.join(parts[3:])]}"

    params = dict(model.named_parameters())
    for pname in sorted(params, key=lambda p: (p.count("."), p)):
        mod = pname.rsplit(".", 1)[0]
        arr = params[pname].detach().float().cpu().numpy()
        gname = gguf_name(mod) + ".weight"
        if ".attn_q." in gname:
            arr = _permute_qk(arr, n_head)
        elif ".attn_k." in gname:
            arr = _permute_qk(arr, n_kv)
        qtype = types.get(mod)
        if qtype is None:  # norms: float32, as in the file
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
            continue
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if qtype == "F16":
            w.add_tensor(gname, arr.astype(np.float16))
            continue
        gtype = GGMLQuantizationType[qtype]
        if qtype in K_QUANTIZERS:
            packed = K_QUANTIZERS[qtype](arr.reshape(-1, QK_K)).reshape(arr.shape[0], -1)
        else:
            packed = quants.quantize(arr, gtype)
        w.add_tensor(gname, packed, raw_shape=packed.shape, raw_dtype=gtype)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path), types
