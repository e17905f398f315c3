"""The Triton kernels of the cut-out draw (`draw_tiles`: engines/tiny/cutout_triton.py says what it does and how it is
called) and of the device compose (`compose_tiles`: engines/tiny/motion_compose.py): imported only where Triton is."""

import triton
import triton.language as tl


@triton.jit
def channel(tex, t00, t10, fx, fy, inside, red, CH: tl.constexpr):
    """One channel of cutout._sample's bilinear mix at texels t00 (its row) and t10 (the next row), and for a skin
    layer (red != 0) the reddened picture's mixed in by face_red after sampling, as the torch draw does."""
    a00 = tl.load(tex + t00 * 8 + CH, mask=inside, other=0.0)
    a01 = tl.load(tex + t00 * 8 + 8 + CH, mask=inside, other=0.0)
    a10 = tl.load(tex + t10 * 8 + CH, mask=inside, other=0.0)
    a11 = tl.load(tex + t10 * 8 + 8 + CH, mask=inside, other=0.0)
    top = a00 + fx * (a01 - a00)
    val = top + fy * (a10 + fx * (a11 - a10) - top)
    if red != 0.0:
        b00 = tl.load(tex + t00 * 8 + 4 + CH, mask=inside, other=0.0)
        b01 = tl.load(tex + t00 * 8 + 12 + CH, mask=inside, other=0.0)
        b10 = tl.load(tex + t10 * 8 + 4 + CH, mask=inside, other=0.0)
        b11 = tl.load(tex + t10 * 8 + 12 + CH, mask=inside, other=0.0)
        rtop = b00 + fx * (b01 - b00)
        val = val + red * (rtop + fy * (b10 + fx * (b11 - b10) - rtop) - val)
    return val


@triton.jit
def pixels(acc, TH: tl.constexpr, TW: tl.constexpr, S: tl.constexpr):
    """The box filter: each pixel's S x S sub-pixels averaged, then [-1, 1]."""
    return tl.sum(tl.sum(tl.reshape(acc, (TH, S, TW, S)), 3), 1) * (2.0 / (S * S)) - 1.0


@triton.jit
def draw_tiles(
    tex,  # (T, 8) float32: premultiplied RGBA, then the reddened skin's RGBA
    nums,  # (P, 20) float32: cutout_torch's _ROW numbers per laid piece
    ints,  # (P, 6) int64: box first row, rows, first column, columns; the picture's first texel, its row length
    frame_pieces,  # (N + 1,) int64: frame f lays pieces frame_pieces[f] .. frame_pieces[f + 1] - 1, in order
    frames,  # (N, 3) int64: the frame's rows, columns (pixels) and its first value in `out`
    out,  # flat float32: each frame's (4, rows, columns)
    tiles_w,  # tiles across the widest frame
    S: tl.constexpr,  # sub-pixels a pixel, each way
    TH: tl.constexpr,
    TW: tl.constexpr,
):
    f = tl.program_id(0)
    t = tl.program_id(1)
    hb = tl.load(frames + f * 3)
    wb = tl.load(frames + f * 3 + 1)
    o0 = tl.load(frames + f * 3 + 2)
    ty = t // tiles_w
    tx = t % tiles_w
    if (ty * TH < hb) & (tx * TW < wb):
        # the tile's sub-pixels: (TH * S, TW * S) at row r, column c of the frame's canvas
        r_lo = ty * (TH * S)
        c_lo = tx * (TW * S)
        r = r_lo + tl.arange(0, TH * S)[:, None]
        c = c_lo + tl.arange(0, TW * S)[None, :]
        acc_r = tl.zeros((TH * S, TW * S), tl.float32)
        acc_g = tl.zeros((TH * S, TW * S), tl.float32)
        acc_b = tl.zeros((TH * S, TW * S), tl.float32)
        acc_a = tl.zeros((TH * S, TW * S), tl.float32)
        p0 = tl.load(frame_pieces + f)
        p1 = tl.load(frame_pieces + f + 1)
        p = p0
        while p < p1:  # a while, not a range: the interpreter cannot take a loaded scalar as range's bound
            q = ints + p * 6
            br0 = tl.load(q)
            bh = tl.load(q + 1)
            bc0 = tl.load(q + 2)
            bw = tl.load(q + 3)
            if (br0 < r_lo + TH * S) & (br0 + bh > r_lo) & (bc0 < c_lo + TW * S) & (bc0 + bw > c_lo):
                first = tl.load(q + 4)
                stride = tl.load(q + 5)
                nb = nums + p * 20
                inside = (r >= br0) & (r < br0 + bh) & (c >= bc0) & (c < bc0 + bw)
                rr = (r - br0).to(tl.float32)
                cc = (c - bc0).to(tl.float32)
                u = tl.load(nb + 0) + tl.load(nb + 2) * rr + tl.load(nb + 4) * cc
                v = tl.load(nb + 1) + tl.load(nb + 3) * rr + tl.load(nb + 5) * cc
                # a limb segment's along coordinate stretched piecewise (the other layers: u as it is), then
                # the reference's bone (the other layers: the identity)
                mid = tl.load(nb + 12) + u * tl.load(nb + 11)
                ur = tl.where(u < tl.load(nb + 9), u, tl.where(u > tl.load(nb + 10), u + tl.load(nb + 13), mid))
                x = tl.load(nb + 14) + ur * tl.load(nb + 16) + v * tl.load(nb + 18)
                y = tl.load(nb + 15) + ur * tl.load(nb + 17) + v * tl.load(nb + 19)
                # cutout._sample: clamped into the bordered picture, its four texels mixed
                x = tl.minimum(tl.maximum(x, 0.0), tl.load(nb + 6))
                y = tl.minimum(tl.maximum(y, 0.0), tl.load(nb + 7))
                xf = tl.floor(x)
                yf = tl.floor(y)
                fx = x - xf
                fy = y - yf
                t00 = first + xf.to(tl.int64) + yf.to(tl.int64) * stride
                t10 = t00 + stride
                red = tl.load(nb + 8)
                g_a = channel(tex, t00, t10, fx, fy, inside, red, 3)
                keep = tl.where(inside, 1.0 - g_a, 1.0)  # 'over': the layer on top of what is under
                acc_a = g_a + keep * acc_a
                acc_r = channel(tex, t00, t10, fx, fy, inside, red, 0) + keep * acc_r
                acc_g = channel(tex, t00, t10, fx, fy, inside, red, 1) + keep * acc_g
                acc_b = channel(tex, t00, t10, fx, fy, inside, red, 2) + keep * acc_b
            p += 1
        py = ty * TH + tl.arange(0, TH)[:, None]
        px = tx * TW + tl.arange(0, TW)[None, :]
        ok = (py < hb) & (px < wb)
        plane = hb * wb
        at = out + o0 + py * wb + px
        tl.store(at, pixels(acc_r, TH, TW, S), mask=ok)
        tl.store(at + plane, pixels(acc_g, TH, TW, S), mask=ok)
        tl.store(at + 2 * plane, pixels(acc_b, TH, TW, S), mask=ok)
        tl.store(at + 3 * plane, pixels(acc_a, TH, TW, S), mask=ok)


@triton.jit
def compose_tiles(
    drawn,  # flat float32: each frame's drawn box (4, dh, dw), premultiplied in [-1, 1]
    boxes,  # (F, 7) int64: the drawn box's first value in `drawn`, its rows and columns, its window row and column,
    # and the rows and columns of it inside the window
    effects,  # (E, 4, pad_H, window_W) float32: effect canvases, premultiplied in [0, 1]
    canvas_of,  # (F,) int64: the frame's effect canvas in `effects`, -1 for none
    out,  # (F, height, width) int32: the uint8 RGBA frames, a pixel's four levels in one word
    pad_top,
    pad_h,
    win_w,
    height,
    width,
    x0,  # the window's first frame column
    tiles_w,
    TH: tl.constexpr,
    TW: tl.constexpr,
):
    k = tl.program_id(0)
    t = tl.program_id(1)
    ty = t // tiles_w
    tx = t % tiles_w
    y = ty * TH + tl.arange(0, TH)[:, None]  # frame rows
    x = tx * TW + tl.arange(0, TW)[None, :]  # window columns
    ok = (y < height) & (x < win_w)
    wy = y + pad_top
    b = boxes + k * 7
    d0 = tl.load(b)
    dh = tl.load(b + 1)
    dw = tl.load(b + 2)
    by = tl.load(b + 3)
    bx = tl.load(b + 4)
    bh = tl.load(b + 5)
    bw = tl.load(b + 6)
    inside = ok & (wy >= by) & (wy < by + bh) & (x >= bx) & (x < bx + bw)
    at = drawn + d0 + (wy - by) * dw + (x - bx)
    plane = dh * dw
    # the window: the drawn box clipped to [-1, 1], transparent (-1) elsewhere; in [0, 1]
    u_r = unit(at, inside)
    u_g = unit(at + plane, inside)
    u_b = unit(at + 2 * plane, inside)
    u_a = unit(at + 3 * plane, inside)
    e = tl.load(canvas_of + k)
    if e >= 0:  # the effects' canvas over the frame
        ep = effects + e * (4 * pad_h * win_w) + wy * win_w + x
        cp = pad_h * win_w
        e_a = tl.load(ep + 3 * cp, mask=ok, other=0.0)
        keep = 1.0 - e_a
        u_r = over(tl.load(ep, mask=ok, other=0.0), keep, u_r)
        u_g = over(tl.load(ep + cp, mask=ok, other=0.0), keep, u_g)
        u_b = over(tl.load(ep + 2 * cp, mask=ok, other=0.0), keep, u_b)
        u_a = over(e_a, keep, u_a)
    # window_to_rgba: straight alpha, uint8, the four channels of a pixel in one 32-bit store (little-endian: R
    # first)
    a = tl.minimum(tl.maximum(u_a, 0.0), 1.0)
    den = tl.maximum(a, 1.0 / 255)
    px = level(a).to(tl.uint32) << 24
    px |= level(tl.minimum(tl.maximum(u_r, 0.0), 1.0) / den).to(tl.uint32)
    px |= level(tl.minimum(tl.maximum(u_g, 0.0), 1.0) / den).to(tl.uint32) << 8
    px |= level(tl.minimum(tl.maximum(u_b, 0.0), 1.0) / den).to(tl.uint32) << 16
    tl.store(out + (k * height + y) * width + x0 + x, px.to(tl.int32, bitcast=True), mask=ok)


@triton.jit
def unit(p, inside):
    """A drawn value read where `inside` (transparent, -1, elsewhere), clipped to [-1, 1], in [0, 1]."""
    return (tl.minimum(tl.maximum(tl.load(p, mask=inside, other=-1.0), -1.0), 1.0) + 1.0) * 0.5


@triton.jit
def over(top, keep, under):
    """`top` over `under` (keep: 1 - top's alpha), then back through [-1, 1] as the numpy compose goes."""
    return ((top + keep * under) * 2.0 - 1.0 + 1.0) * 0.5


@triton.jit
def level(v):
    """A value in [0, 1] (clamped) as a uint8 level, rounded as window_to_rgba rounds."""
    return (tl.minimum(tl.maximum(v, 0.0), 1.0) * 255.0 + 0.5).to(tl.uint8)
