"""Linear layers fused with their bias, activation or residual add, for CPU inference on many rows.

On CPU, eager `F.linear` with a bias is an `addmm`: it first broadcasts the bias into a fresh output and then
accumulates the GEMM into it, and the GELU or residual add after it is one more pass over memory each. On the
image encoder's shapes (65,536 tokens of 96 channels at the first stage) those passes cost as much as the
GEMM itself. oneDNN's linear applies bias, activation and add while the output tile is still in registers
(what Inductor's CPU backend emits for the same pattern); measured on a 2-core AVX-512 Xeon, 65536x96 -> 384:
linear 69 -> 35 ms, linear + GELU 105 -> 60 ms in float32, and 62 -> 21 ms for linear + GELU in bfloat16.

The fused path runs only where it pays and is exact to rounding: CPU tensors in float32 or bfloat16 that need
no gradient, with at least `MIN_ROWS` rows (dispatch costs more than it saves on a decoder's few tokens).
Everywhere else, in builds without oneDNN, and inside `plain()`, the same call runs the plain ops.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from segany import runtime

MIN_ROWS = 2048

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_ACTIVATIONS = {nn.GELU: "gelu", nn.ReLU: "relu"}
_PLAIN = {"gelu": F.gelu, "relu": F.relu}
_plain_only = contextvars.ContextVar("segany_plain_linear", default=False)


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Run the official order of operations inside: every `linear` on the plain ATen ops, the mask
    decoder's attention and upscaling as the official modules, and the high-resolution features as the
    neck's level then the decoder's projection (no reassociated CPU routes).

    Video tracking needs this: the official tracker binarises masks and fills small holes before it
    encodes a memory, and stores memories rounded to bfloat16, so a last-bit difference in a frame's
    features can flip a pixel at the threshold and move a later frame's logits past the goldens'
    tolerance (seen once: 0.054 against 0.05 on one pixel). Memory attention, not the encoder,
    dominates a tracked frame's time, so exactness costs little there.
    """
    token = _plain_only.set(True)
    try:
        yield
    finally:
        _plain_only.reset(token)


def in_plain() -> bool:
    """Whether the caller is inside `plain()`."""
    return _plain_only.get()


def _gelu_in_epilogue() -> bool:
    """Whether oneDNN's GELU epilogue beats a separate `F.gelu` pass: only with its AVX-512 erf.

    Its AVX2 erf is slow: 4096x384 -> 1536 took 23.1 ms plain, 30.8 ms with the GELU epilogue and 2.6 ms
    more for `F.gelu` after it (2-core Xeon capped at AVX2); with AVX-512, 15.0, 15.8 and 1.9 ms.
    """
    return runtime.onednn_runs_avx512()


def activation_name(module: nn.Module) -> str | None:
    """"gelu" or "relu" for the activations oneDNN can fuse (exact-erf GELU only), else None."""
    if isinstance(module, nn.GELU) and module.approximate != "none":
        return None
    return _ACTIVATIONS.get(type(module))


def active(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fused ops would run on `x` with `weight` (any row count)."""
    return (
        _ONEDNN
        and not in_plain()
        and not torch.jit.is_tracing()  # exporters (ONNX, OpenVINO) trace the plain ops they know
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def linear(
    x: torch.Tensor, layer: nn.Linear, activation: str | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """`act(layer(x))` or `layer(x) + residual` (not both) in one pass where it pays, else as plain ops.

    x (..., in_features); residual, if given, has the output's shape.
    """
    return affine(x, layer.weight, layer.bias, activation, residual)


def affine(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`linear` on a bare (out, in) weight and (out,) bias, for layers that are linear maps in disguise."""
    if activation is not None and residual is not None:
        raise ValueError("fuse either an activation or a residual add, not both")
    if active(x, weight) and x.numel() >= MIN_ROWS * x.shape[-1]:
        if residual is not None and residual.shape[:-1] == x.shape[:-1] and residual.dtype == x.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
        if residual is None and activation == "gelu" and not _gelu_in_epilogue():
            return F.gelu(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none"))
        if residual is None:
            # The last argument picks GELU's algorithm: "none" is the exact erf form, as nn.GELU().
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [], "none")
    y = F.linear(x, weight, bias)
    if activation is not None:
        return _PLAIN[activation](y)
    return y if residual is None else y + residual
