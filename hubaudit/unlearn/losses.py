"""The unlearning losses, written from their definitions.

Every function takes logits (or models) and right-padded ``labels`` in which ``-100`` marks positions
that are not scored (padding). A row's token ``t`` is predicted from the logits at ``t - 1``.

- GA (gradient ascent): minimise the mean token log-likelihood of the forget batch, ``L = -NLL``, averaged
  over its real tokens (not per row first: a short row weighs as much per token as a long one), as the
  paper's and open-unlearning's code take it from the Hugging Face loss.
- NPO (Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization"): with the sequence
  log-likelihood ratio ``r = log pi_theta(y|x) - log pi_ref(y|x)`` (sums over the row's tokens),
  ``L = (2/beta) * E[log(1 + exp(beta * r))] = -(2/beta) * E[logsigmoid(-beta * r)]``. Its gradient is
  ``2 * sigmoid(beta * r) * grad r``: as ``beta -> 0`` it tends to the gradient of GA on sequence sums,
  and it fades once a row is about ``1/beta`` nats less likely than under the reference.
- GDR: plus the mean token NLL of the retain batch, averaged over its real tokens likewise.
- KLR: plus ``KL(p_ref || p_theta)`` between the two models' next-token distributions on the retain rows,
  per token, averaged over real tokens. A true KL, from ``log_softmax`` of both (>= 0, 0 for identical
  models); not a divergence of raw logits.
"""

from __future__ import annotations

METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")


def _shift(logits, labels):
    return logits[:, :-1].float(), labels[:, 1:]


def token_nll(logits, labels):
    """Per-token NLL ``[B, T-1]`` (0 where the label is ``-100``) and the mask of real tokens."""
    import torch.nn.functional as F

    lg, tgt = _shift(logits, labels)
    nll = F.cross_entropy(lg.reshape(-1, lg.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="none")
    valid = (tgt != -100).float()
    return nll.view(tgt.shape) * valid, valid


def sequence_logprob(logits, labels):
    """``log pi(y|x)`` per row, ``[B]``: the sum of the row's token log-probabilities."""
    nll, _ = token_nll(logits, labels)
    return -nll.sum(1)


def mean_token_nll(logits, labels):
    """Mean token NLL per row, ``[B]``."""
    nll, valid = token_nll(logits, labels)
    return nll.sum(1) / valid.sum(1).clamp(min=1)


def batch_token_nll(logits, labels):
    """The NLL averaged over every real token of the batch (the Hugging Face causal-LM loss)."""
    nll, valid = token_nll(logits, labels)
    return nll.sum() / valid.sum().clamp(min=1)


def ga_loss(logits, labels):
    """Gradient ascent: minus the token NLL averaged over the batch's real tokens."""
    return -batch_token_nll(logits, labels)


def npo_loss(logp, logp_ref, beta: float = 0.1):
    """NPO from sequence log-probabilities ``logp`` (with gradient) and ``logp_ref`` (the reference's):
    ``-(2/beta) * mean(logsigmoid(-beta * (logp - logp_ref)))``."""
    import torch.nn.functional as F

    if beta <= 0:
        raise ValueError(f"NPO needs beta > 0, got {beta}")
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref.detach())).mean()


def kl_loss(logits, logits_ref, labels):
    """``KL(p_ref || p_theta)`` of the next-token distributions, summed over the vocabulary, averaged over
    the real (scored) positions of the batch."""
    import torch.nn.functional as F

    lg, tgt = _shift(logits, labels)
    lr = logits_ref[:, :-1].float().detach()
    kl = F.kl_div(F.log_softmax(lg, -1), F.log_softmax(lr, -1), log_target=True, reduction="none").sum(-1)
    valid = (tgt != -100).float()
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def _token_logprobs(model, batch):
    """Per-token log-probabilities ``[B, T-1]`` (0 where the label is -100) and the mask of real tokens,
    through :mod:`hubaudit.logprobs`: the output layer a slice of positions at a time (checkpointed), so
    no float32 ``[B, T, vocabulary]`` tensor is held for the backward pass. The same values as
    :func:`token_nll` on the model's logits."""
    from ..logprobs import token_logprobs

    ids, mask, labels = batch
    return token_logprobs(model, ids, mask, labels), (labels[:, 1:] != -100).float()


def forget_term(method: str, model, ref_model, batch, beta: float = 0.1):
    """The forget part of ``method``'s loss on one batch ``(ids, mask, labels)``."""
    import torch

    if not (method.startswith("ga") or method.startswith("npo")):
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    lp, valid = _token_logprobs(model, batch)
    if method.startswith("ga"):  # ga_loss: minus the token NLL averaged over the batch's real tokens
        return lp.sum() / valid.sum().clamp(min=1)
    with torch.no_grad():
        ref = _token_logprobs(ref_model, batch)[0].sum(1)
    return npo_loss(lp.sum(1), ref, beta)


def retain_term(method: str, model, ref_model, batch):
    """The retain part of ``method``'s loss (None for plain ``ga``/``npo``): NLL (GDR) or KL to the
    reference (KLR)."""
    if not (method.endswith("_gdr") or method.endswith("_klr")):
        return None
    if method.endswith("_gdr"):  # batch_token_nll: averaged over the batch's real tokens
        lp, valid = _token_logprobs(model, batch)
        return -lp.sum() / valid.sum().clamp(min=1)
    from ..logprobs import kl_per_token

    ids, mask, labels = batch
    kl = kl_per_token(model, ref_model, ids, mask, labels)  # kl_loss, a slice of positions at a time
    valid = (labels[:, 1:] != -100).float()
    return kl.sum() / valid.sum().clamp(min=1)


def needs_reference(method: str) -> bool:
    """Whether ``method`` needs a frozen copy of the original model (NPO and KLR do)."""
    return method.startswith("npo") or method.endswith("_klr")
