"""Layers shared across models: gradient reversal (Ganin & Lempitsky 2015) and domain-specific batch norm."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lambda (Ganin et al. 2016, eq. (13)-(14))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """R_lambda(x): forward x, backward -lambda * dL/dx. `lambd` is a Python float, so no CPU-GPU sync."""
    return _GradientReversal.apply(x, float(lambd))


class GradientReversal(nn.Module):
    """The gradient reversal layer as a module; set `.lambd` each step (DANN's schedule lambda_p)."""

    def __init__(self, lambd: float = 1.0) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)


Segments = tuple[tuple[int, int], ...]  # ((domain, count), ...): a batch made of consecutive per-domain chunks


class DomainBatchNorm2d(nn.Module):
    """Batch norm with separate statistics per domain and a shared affine (AdaBN, Li et al. 2016; DSBN, Chang et al.
    2019). With num_domains=1 it is a plain BatchNorm2d over the whole (mixed) batch."""

    def __init__(self, channels: int, num_domains: int = 2) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(num_domains))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        if len(self.norms) == 1:
            y = self.norms[0](x)
        else:
            chunks, start = [], 0
            for domain, count in segments:
                chunks.append(self.norms[domain](x[start:start + count]))
                start += count
            y = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return y * self.weight.view(1, -1, 1, 1).to(y.dtype) + self.bias.view(1, -1, 1, 1).to(y.dtype)


def instance_standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel: (x - mean_hw) / std_hw (the input instance norm of DIRT-T, Shu et al. 2018)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


def conv_norm_act(conv: nn.Conv2d, norm: DomainBatchNorm2d, x: torch.Tensor, segments: Segments) -> torch.Tensor:
    """conv -> domain batch norm -> LeakyReLU(0.1), the DIRT-T small-CNN unit."""
    return F.leaky_relu(norm(conv(x), segments), 0.1)
