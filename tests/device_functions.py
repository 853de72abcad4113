"""Device functions of the user-function tests (error.model 'factory', docs/physics.md 13.2)."""
import torch


def proportional_7pct(targets: torch.Tensor, eps: torch.Tensor, gmin: float) -> torch.Tensor:
    return targets + 0.07 * targets.abs() * eps


def skewed(targets: torch.Tensor, eps: torch.Tensor, gmin: float) -> torch.Tensor:
    """A cell that programs low states high: shift +0.01 below mid-range, spread 0.02."""
    return targets + torch.where(targets < 0.5, 0.01, 0.0) + 0.02 * eps


def wrong_shape(targets, eps, gmin):
    return targets[0]
