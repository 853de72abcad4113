"""Per-image losses of the metrics other than accuracy (docs/physics.md section 14).

A chip's score under ``metric: mse | perplexity | {factory: ...}`` is a function of its mean loss
``sum_i L_i / sum_i c_i`` over the images ``i``; :func:`image_losses` gives ``L_i`` per chip and
``c_i`` from a batch's outputs, the worker keeps their sums (:func:`mcsim.stats.moment_sums`):

* ``mse``: ``L_i`` the sum of the squared errors of image ``i``'s outputs against its float
  targets (same number of elements), ``c_i`` that number;
* ``perplexity``: ``L_i`` the sum of the token negative log-likelihoods (natural log) of the logits
  ``(..., V)`` against class-index targets (the outputs' shape without ``V``), ``c_i`` the tokens;
  the score is ``exp(sum L / sum c)``;
* a factory ``fn(outputs, targets, **kwargs) -> (C, B)`` values: ``L_i`` the value, ``c_i = 1``.

Each loss is computed per chip and image (float64 from the logits on), so a chip's sums do not
depend on the other chips of its block (docs/physics.md section 9).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from mcsim.errors import InputError

__all__ = ["MetricError", "image_losses"]


class MetricError(InputError, ValueError):
    """Outputs and targets the scenario's metric cannot score; the message starts with ``metric:``."""

    in_scenario = True


def image_losses(outputs: torch.Tensor, targets: torch.Tensor, metric: str,
                 fn: Optional[Callable] = None, kwargs: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(L, c)``: per chip and image the summed loss ``L (C, B)`` and per image the elements or
    tokens ``c (B,)``, float64, of ``outputs (C, B, ...)`` (C chips; 1 for the digital model) against
    ``targets (B, ...)``. ``metric``: ``mse``, ``perplexity``, or any other name with ``fn``."""
    targets = targets.to(outputs.device)
    batch = outputs.shape[1]
    if fn is not None:
        try:
            values = torch.as_tensor(fn(outputs, targets, **(kwargs or {})))
        except Exception as exc:
            raise MetricError(f"metric.factory: the metric function failed on outputs {tuple(outputs.shape)} and "
                              f"targets {tuple(targets.shape)}: {type(exc).__name__}: {exc}") from exc
        if tuple(values.shape) != tuple(outputs.shape[:2]):
            raise MetricError(f"metric.factory: the metric function returned shape {tuple(values.shape)}, not one "
                              f"value per chip and sample {tuple(outputs.shape[:2])}")
        return values.double().cpu().numpy(), np.ones(batch)
    if metric == "mse":
        if targets.numel() != outputs[0].numel():
            raise MetricError(f"metric: mse compares outputs {tuple(outputs.shape[1:])} with targets of as many "
                              f"elements, got targets {tuple(targets.shape)}")
        err = outputs.double() - targets.double().reshape(outputs.shape[1:])
        sq = (err * err).reshape(outputs.shape[0], batch, -1).cpu().numpy()
        return sq.sum(-1), np.full(batch, sq.shape[-1], dtype=np.float64)
    if metric == "perplexity":
        if targets.is_floating_point() or tuple(targets.shape) != tuple(outputs.shape[1:-1]):
            raise MetricError(f"metric: perplexity scores logits {tuple(outputs.shape[1:])} against class indices "
                              f"of shape {tuple(outputs.shape[1:-1])}, got {targets.dtype} {tuple(targets.shape)}")
        logits = outputs.double()
        picked = logits.gather(-1, targets.expand(outputs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        nll = (torch.logsumexp(logits, -1) - picked).reshape(outputs.shape[0], batch, -1).cpu().numpy()
        return nll.sum(-1), np.full(batch, nll.shape[-1], dtype=np.float64)
    raise ValueError(f"metric: {metric!r} has no per-image loss (a factory metric needs its function)")
