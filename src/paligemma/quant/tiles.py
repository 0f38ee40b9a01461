"""The dot kernels' weight layouts (int4_dot.cpp, "tiles"), packed from linear.py's portable ones.

Int4Linear saves and loads the portable layout (codes uint8[O, I / 2], low nibble first; scales
[O, G]); for the int8-activation kernel it keeps a packed copy, built once at first use:

    tiles uint8[T, I / 8, 64]   T = ceil(O / 16) tiles of 16 output rows (the last padded with
                                code 8, i.e. 0); in block b, byte 4l + k holds code[16t + l, 8b + k]
                                in its low nibble and code[16t + l, 8b + 4 + k] in its high one
    scale bfloat16[T, G, 16]    scale[16t + l, g] at [t, g, l] (padding rows 0)

bfloat16 scales halve what the scales cost per token (4 -> 2 bytes per 64 weights); their
rounding (2^-9 relative) is far below int4's own step. Int8Linear's copy for int8_dot (pack8):
the same tiles of 16 rows, 4 inputs per block (a byte each, code + 128), float32 scales [T, 16].
"""

from __future__ import annotations

import torch

LANES = 16  # output rows per tile


def pack(codes: torch.Tensor, scale: torch.Tensor, rows: int = 4096) -> tuple[torch.Tensor, ...]:
    """(tiles, scales) of the portable codes uint8[O, I / 2] and scales [O, G], `rows` output rows
    at a time (the unpacked codes are a byte per weight)."""
    o, half = codes.shape
    t = -(-o // LANES)
    tiles = torch.empty(t, half // 4, 64, dtype=torch.uint8)
    rows -= rows % LANES
    for start in range(0, o, rows):
        part = codes[start : start + rows]
        c = torch.stack([part & 15, part >> 4], -1).view(len(part), 2 * half)  # (r, I)
        pad = -len(part) % LANES
        c = torch.cat([c, c.new_full((pad, 2 * half), 8)]) if pad else c
        c = c.view(-1, LANES, half // 4, 2, 4)  # (tile, lane, block, nibble, k)
        byte = c[:, :, :, 0] | (c[:, :, :, 1] << 4)  # (tile, lane, block, k)
        tiles[start // LANES : (start + len(part) + pad) // LANES] = byte.transpose(1, 2).reshape(
            -1, half // 4, 64
        )
    s = torch.zeros(t * LANES, scale.shape[1], dtype=torch.bfloat16)
    s[:o] = scale.to(torch.bfloat16)
    return tiles, s.view(t, LANES, -1).transpose(1, 2).contiguous()


def unpack(
    tiles: torch.Tensor, scales: torch.Tensor, out_features: int
) -> tuple[torch.Tensor, ...]:
    """The inverse of pack: (codes uint8[O, I] 0..15, scales bfloat16[O, G])."""
    t, blocks, _ = tiles.shape
    b = tiles.view(t, blocks, LANES, 4).transpose(1, 2)  # (tile, lane, block, k)
    c = torch.stack([b & 15, b >> 4], 3).reshape(t * LANES, blocks * 8)
    return c[:out_features], scales.transpose(1, 2).reshape(t * LANES, -1)[:out_features]


def pack8(codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8_dot's layout of int8 codes [O, I] and scales [O]: (tiles uint8[T, I / 4, 64] holding
    code + 128, byte 4l + k of block b = row 16t + l, input 4b + k; scales float32[T, 16])."""
    o, i = codes.shape
    pad = -o % LANES
    u = (codes.to(torch.int16) + 128).to(torch.uint8)
    u = torch.cat([u, u.new_full((pad, i), 128)]) if pad else u
    tiles = u.view(-1, LANES, i // 4, 4).transpose(1, 2).reshape(-1, i // 4, 64)
    s = torch.cat([scale.float(), scale.new_zeros(pad, dtype=torch.float32)])
    return tiles, s.view(-1, LANES)


def unpack8(
    tiles: torch.Tensor, scales: torch.Tensor, out_features: int
) -> tuple[torch.Tensor, ...]:
    """The inverse of pack8: (codes int8[O, I], scales float32[O])."""
    t, blocks, _ = tiles.shape
    u = tiles.view(t, blocks, LANES, 4).transpose(1, 2).reshape(t * LANES, blocks * 4)
    return (u.to(torch.int16) - 128).to(torch.int8)[:out_features], scales.reshape(-1)[
        :out_features
    ]
