"""G independent MLPs of the same shape applied at once: the decoder's eight AdaIN MLPs under ``--fused``.

Each layer's G weight matrices and biases are stacked and applied with one ``baddbmm``, instead of G
separate ``linear`` calls per layer. :func:`grouped_mlp_reference` is the plain twin (each MLP in turn).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Layer = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]  # (G weights (out, in), G biases (out,))


def _check(layers: Sequence[Layer], x: torch.Tensor, out_chunks: int) -> None:
    if not layers:
        raise ValueError("grouped_mlp: layers is empty; expected at least one (weights, biases) pair")
    if x.dim() != 3:
        raise ValueError(f"grouped_mlp: x must be (G, N, in), got shape {tuple(x.shape)}")
    for i, (ws, bs) in enumerate(layers):
        if len(ws) != x.shape[0] or len(bs) != x.shape[0]:
            raise ValueError(f"grouped_mlp: layer {i} has {len(ws)} weights and {len(bs)} biases for "
                             f"G = {x.shape[0]} groups")
    out = layers[-1][0][0].shape[0]
    if out_chunks < 1 or out % out_chunks:
        raise ValueError(f"grouped_mlp: out_chunks={out_chunks} must divide the last layer's {out} outputs")


def grouped_mlp_reference(layers: Sequence[Layer], x: torch.Tensor, out_chunks: int = 1,
                          negative_slope: float = 0.2) -> torch.Tensor:
    """Plain twin of :func:`grouped_mlp`: MLP ``g`` (``linear`` -> leaky ReLU per layer, none after the last) on
    ``x[g]``, one group after the other, each output cut into ``out_chunks`` rows."""
    _check(layers, x, out_chunks)
    rows = []
    for g in range(x.shape[0]):
        h = x[g]
        for i, (ws, bs) in enumerate(layers):
            h = F.linear(h, ws[g], bs[g])
            if i < len(layers) - 1:
                h = F.leaky_relu(h, negative_slope)
        rows += h.chunk(out_chunks, dim=1)
    return torch.stack(rows)


def grouped_mlp(layers: Sequence[Layer], x: torch.Tensor, out_chunks: int = 1,
                negative_slope: float = 0.2) -> torch.Tensor:
    """``G`` MLPs at once: ``x`` ``(G, N, in)`` -> ``(G * out_chunks, N, out / out_chunks)``.

    Args:
        layers: per layer, the G weights ``(out_l, in_l)`` and G biases ``(out_l,)`` (the MLPs' own parameters:
            state dicts and optimiser state are unchanged; stacking copies them once per call, and the
            backward hands each parameter a view of the stacked gradient).
        x: ``(G, N, in)``, row ``g`` feeding MLP ``g``; float, on the parameters' device.
        out_chunks: the last layer runs each of its output chunks as its own group, so that row
            ``g * out_chunks + h`` is chunk ``h`` of MLP ``g``'s output, contiguous (the decoder's per-layer
            AdaIN parameters, whose gradients one ``stack`` then gathers).
        negative_slope: of the leaky ReLU after every layer but the last.
    Returns:
        ``(G * out_chunks, N, out / out_chunks)`` in x's dtype and device; equal to
        :func:`grouped_mlp_reference` up to float rounding, with the same gradients.
    """
    _check(layers, x, out_chunks)
    last = len(layers) - 1
    for i, (ws, bs) in enumerate(layers):
        w = torch.stack(list(ws))  # (G, out, in)
        b = torch.stack(list(bs))  # (G, out)
        if i == last and out_chunks > 1:
            groups, out, width = w.shape
            w = w.reshape(groups * out_chunks, out // out_chunks, width)
            b = b.reshape(groups * out_chunks, out // out_chunks)
            x = x.repeat_interleave(out_chunks, dim=0)
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if i != last:
            x = F.leaky_relu(x, negative_slope)
    return x
