"""Convolution and pooling on NCHW images: the plain maths first, then the fast forms the layers use.

Shapes, stated once:

    x    (N, C, H, W)        a batch of images, channels first (torch's and CS231n's layout)
    W    (F, C, KH, KW)      F filters; b (F,)
    out  (N, F, OH, OW)      OH = (H + 2 ph - KH) // sh + 1, OW likewise (torch's floor rule)

Stride (sh, sw) and zero padding (ph, pw) are pairs. A conv is a *cross-correlation*, as in every
framework: the kernel is not flipped. Pools have no padding; a row or column a window never reaches
(H = 11, pool 2) is dropped, as torch's ceil_mode=False and keras' padding="valid" drop it.

Max-pool ties: the gradient goes to the FIRST maximal element of the window in row-major order
(np.argmax's rule), and to no other. Overlapping windows (stride < pool) route independently, and an
element that is the maximum of several windows collects all their gradients.

The plain forms loop over output positions and are the definition; the fast forms loop over the
KH KW kernel offsets instead (a handful of whole-array slab copies or adds: im2col, col2im, the
pools) and do one GEMM per product. tests/test_fast_forms.py pins every fast form to its plain form
on random shapes, strides and pads (and max-pool's tie rule bit for bit).
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Pair = tuple[int, int]


def out_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """(size + 2 pad - kernel) // stride + 1: output positions along one axis."""
    return (size + 2 * pad - kernel) // stride + 1


class Workspace:
    """Arrays a layer keeps from one step to the next, for its large temporaries and outputs.

    Why: a training step of mnist-cnn allocates and frees ~20 MB of arrays; glibc gives memory back
    to the kernel once more than twice its largest recent block is free at the top of its heap, so
    every step faulted the same pages in again (about 4,000 page faults a step, ~40 % of the CPU
    time in the kernel). Handing the same arrays out again takes that away.

    Safe by construction: an array is handed out again only when nobody else holds it or a view of
    it (no cache, no output a caller kept, no trace record): sys.getrefcount counts them all, as
    numpy's own ndarray.resize does. Otherwise a fresh array is made and kept instead. Not for one
    layer shared by threads at once (the reference's layers are not, and Network never does that).
    """

    KEEP_AT_MOST = 32 * 2**20  # bytes per array: a training batch's arrays, not an evaluation chunk's

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def empty(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised C-ordered array, the kept one when it is free and of that shape and dtype.

        A new array is kept in place of the old one only up to KEEP_AT_MOST bytes: evaluate's
        10,000-row chunks (a 282 MB im2col matrix in mnist-cnn's first conv) are not held on to.
        """
        a = self.arrays.get(key)
        # 3 references when free: self.arrays, the local name a, getrefcount's own argument.
        if a is None or a.shape != shape or a.dtype != dtype or sys.getrefcount(a) > 3:
            a = np.empty(shape, dtype)
            if a.nbytes <= self.KEEP_AT_MOST:
                self.arrays[key] = a
        return a

    def empty_like(self, key: str, like: np.ndarray, dtype=None) -> np.ndarray:
        """np.empty_like(like, dtype): like's shape, its axes in like's memory order (a view of a kept array)."""
        dtype = like.dtype if dtype is None else dtype
        if like.flags.c_contiguous:
            return self.empty(key, like.shape, dtype)
        order, back = _orders(like.strides)
        a = self.empty(key, tuple(like.shape[k] for k in order), dtype)
        return a.transpose(back)


def empty(work: Workspace | None, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty(shape, dtype), or the workspace's kept array `key`."""
    return np.empty(shape, dtype) if work is None else work.empty(key, shape, dtype)


def empty_like(work: Workspace | None, key: str, like: np.ndarray, dtype=None) -> np.ndarray:
    """np.empty_like(like, dtype) (like's memory order), or the workspace's kept array `key`."""
    return np.empty_like(like, dtype) if work is None else work.empty_like(key, like, dtype)


def _axis_order(a: np.ndarray) -> tuple[int, ...]:
    """a's axes from the outermost in memory to the innermost."""
    return _orders(a.strides)[0]


@functools.lru_cache(maxsize=256)
def _orders(strides: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the axes from the outermost in memory to the innermost, the permutation that undoes it)."""
    order = tuple(sorted(range(len(strides)), key=lambda k: -strides[k]))
    return order, tuple(order.index(k) for k in range(len(strides)))


def pad_images(x: np.ndarray, padding: Pair, work: Workspace | None = None) -> np.ndarray:
    """Zero padding of (ph, pw) on both sides of H and W."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    if work is None:
        return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    (N, C, H, W) = x.shape
    xp = work.empty("padded", (N, C, H + 2 * ph, W + 2 * pw), x.dtype)  # np.pad's numbers: borders 0, x inside
    xp[:, :, :ph], xp[:, :, ph + H :], xp[:, :, :, :pw], xp[:, :, :, pw + W :] = 0, 0, 0, 0
    xp[:, :, ph : ph + H, pw : pw + W] = x
    return xp


# The plain forms: loops over output positions ------------------------------------------------


def conv2d_forward_plain(x, W, b, stride: Pair, padding: Pair):
    """out[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] xp[n, c, i sh + u, j sw + v]"""
    (sh, sw), (F, _, KH, KW) = stride, W.shape
    xp = pad_images(x, padding)
    OH, OW = out_size(xp.shape[2], KH, sh), out_size(xp.shape[3], KW, sw)
    out = np.empty((x.shape[0], F, OH, OW), x.dtype)
    for i in range(OH):
        for j in range(OW):
            patch = xp[:, :, i * sh : i * sh + KH, j * sw : j * sw + KW]  # (N, C, KH, KW)
            out[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def conv2d_backward_plain(g, x, W, stride: Pair, padding: Pair):
    """dW[f,c,u,v] = sum_{n,i,j} g[n,f,i,j] xp[n,c,i sh+u,j sw+v];  db = sum g;  dxp[..window] += g W"""
    (sh, sw), (_, _, KH, KW), (ph, pw) = stride, W.shape, padding
    xp = pad_images(x, padding)
    dxp, dW = np.zeros_like(xp), np.zeros_like(W)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            window = (slice(None), slice(None), slice(i * sh, i * sh + KH), slice(j * sw, j * sw + KW))
            dW += np.tensordot(g[:, :, i, j], xp[window], axes=([0], [0]))  # (F, C, KH, KW)
            dxp[window] += np.tensordot(g[:, :, i, j], W, axes=([1], [0]))  # (N, C, KH, KW)
    dx = dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]
    return dx, dW, g.sum(axis=(0, 2, 3))


def maxpool2d_forward_plain(x, pool: Pair, stride: Pair):
    """out[n, c, i, j] = max_{u < PH, v < PW} x[n, c, i sh + u, j sw + v]"""
    (PH, PW), (sh, sw) = pool, stride
    OH, OW = out_size(x.shape[2], PH, sh), out_size(x.shape[3], PW, sw)
    out = np.empty((*x.shape[:2], OH, OW), x.dtype)
    for i in range(OH):
        for j in range(OW):
            out[:, :, i, j] = x[:, :, i * sh : i * sh + PH, j * sw : j * sw + PW].max(axis=(2, 3))
    return out


def maxpool2d_backward_plain(g, x, pool: Pair, stride: Pair):
    """dx[n, c, window's first argmax] += g[n, c, i, j]  for every window (i, j)"""
    (PH, PW), (sh, sw) = pool, stride
    dx = np.zeros_like(x)
    N, C = x.shape[:2]
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            window = x[:, :, i * sh : i * sh + PH, j * sw : j * sw + PW].reshape(N, C, PH * PW)
            first = window.argmax(axis=2)  # (N, C): the first maximum in row-major order
            routed = np.zeros((N, C, PH * PW), x.dtype)
            np.put_along_axis(routed, first[:, :, None], g[:, :, i, j][:, :, None], axis=2)
            dx[:, :, i * sh : i * sh + PH, j * sw : j * sw + PW] += routed.reshape(N, C, PH, PW)
    return dx


def avgpool2d_forward_plain(x, pool: Pair, stride: Pair):
    """out[n, c, i, j] = sum_{u < PH, v < PW} x[n, c, i sh + u, j sw + v] / (PH PW)"""
    (PH, PW), (sh, sw) = pool, stride
    OH, OW = out_size(x.shape[2], PH, sh), out_size(x.shape[3], PW, sw)
    out = np.empty((*x.shape[:2], OH, OW), x.dtype)
    for i in range(OH):
        for j in range(OW):
            out[:, :, i, j] = x[:, :, i * sh : i * sh + PH, j * sw : j * sw + PW].sum(axis=(2, 3)) / (PH * PW)
    return out


def avgpool2d_backward_plain(g, x, pool: Pair, stride: Pair):
    """dx[n, c, window] += g[n, c, i, j] / (PH PW)  for every window (i, j)"""
    (PH, PW), (sh, sw) = pool, stride
    dx = np.zeros_like(x)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            dx[:, :, i * sh : i * sh + PH, j * sw : j * sw + PW] += (g[:, :, i, j] / (PH * PW))[:, :, None, None]
    return dx


# The fast forms: one GEMM per product ----------------------------------------------------------
#
# The GEMM's operands are laid out so that every copy runs along a whole image row:
#   cols (KH KW C, N OH OW)  cols[(u, v, c), (n, i, j)] = xp[n, c, i sh + u, j sw + v]
#   W2   (F, KH KW C)        W2[f, (u, v, c)] = W[f, c, u, v]
#   out  = W2 @ cols         (F, N OH OW), returned as the (N, F, OH, OW) view of that memory
# Building cols is KH KW slab copies (one per kernel offset), not N OH OW C KH KW scalar ones;
# the adjoint (col2im) is KH KW strided adds. The layers downstream take views as they come.


def windows(x: np.ndarray, kernel: Pair, stride: Pair) -> np.ndarray:
    """The view win[n, c, i, j, u, v] = x[n, c, i sh + u, j sw + v]  (N, C, OH, OW, KH, KW), no copy."""
    (sh, sw) = stride
    return sliding_window_view(x, kernel, axis=(2, 3))[:, :, ::sh, ::sw]


def _offset(x: np.ndarray, u: int, v: int, out_hw: Pair, stride: Pair) -> np.ndarray:
    """The view x[:, :, i sh + u, j sw + v] over output positions (i, j): (N, C, OH, OW)."""
    (OH, OW), (sh, sw) = out_hw, stride
    return x[:, :, u : u + sh * (OH - 1) + 1 : sh, v : v + sw * (OW - 1) + 1 : sw]


def im2col(xp: np.ndarray, kernel: Pair, stride: Pair, work: Workspace | None = None) -> np.ndarray:
    """cols[(u, v, c), (n, i, j)] = xp[n, c, i sh + u, j sw + v]   (KH KW C, N OH OW), one copy."""
    (N, C, Hp, Wp), (KH, KW) = xp.shape, kernel
    out_hw = (out_size(Hp, KH, stride[0]), out_size(Wp, KW, stride[1]))
    cols = empty(work, "cols", (KH, KW, C, N, *out_hw), xp.dtype)
    for u in range(KH):
        for v in range(KW):
            cols[u, v] = _offset(xp, u, v, out_hw, stride).transpose(1, 0, 2, 3)  # (C, N, OH, OW)
    return cols.reshape(KH * KW * C, -1)


def col2im(d_cols: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair, work=None):
    """The adjoint of im2col, padding cut off: dx[n, c, i sh + u - ph, j sw + v - pw] += d_cols[(u, v, c), (n, i, j)].

    In the same-size case (col2im_same) d_cols' entries that belong to the padding are set to 0.
    """
    if is_same_shape(kernel, stride, padding):
        return col2im_same(d_cols, x_shape, kernel, work)
    (N, C, H, W), (KH, KW), (ph, pw) = x_shape, kernel, padding
    out_hw = (out_size(H, KH, stride[0], ph), out_size(W, KW, stride[1], pw))
    d = d_cols.reshape(KH, KW, C, N, *out_hw)
    dxp = np.zeros((C, N, H + 2 * ph, W + 2 * pw), d_cols.dtype)  # (C, N, ...): the adds run along rows
    for u in range(KH):
        for v in range(KW):
            _offset(dxp, u, v, out_hw, stride)[...] += d[u, v]
    return dxp[:, :, ph : ph + H, pw : pw + W].transpose(1, 0, 2, 3)  # (N, C, H, W) view


# Stride 1 with "same" padding (KH = 2 ph + 1, KW = 2 pw + 1, so OH = H and OW = W): the commonest conv
# (3x3 pad 1, 5x5 pad 2) has a faster im2col. Flatten every channel over (n, h, w): position
# p = (n H + i) W + j. Kernel offset (u, v) then reads the element s = (u - ph) W + (v - pw) further
# on, so each cols row is ONE contiguous shifted copy of its channel, instead of N OH short row
# copies. The shift also reads elements that the padding would have supplied as zeros: a window row
# above or below its own image (i + u - ph outside 0..H-1, which lands in the next image) or a
# column beyond its own row (j + v - pw outside 0..W-1, which lands in the next row). Those entries
# are set to 0 after the copy: the same matrix as im2col's, element for element. col2im_same adds
# the same shifted rows back (the masked entries left out), in im2col's (u, v) order from zeros:
# col2im's sums, in its order.


def is_same_shape(kernel: Pair, stride: Pair, padding: Pair) -> bool:
    """Stride 1 and an odd kernel padded by half its size on each side: the output is the input's size."""
    return tuple(stride) == (1, 1) and all(k == 2 * p + 1 for k, p in zip(kernel, padding))


class SameOffset(NamedTuple):
    """What one kernel offset (u, v) of a same-size conv does to the rows of cols (see above)."""

    u: int
    v: int
    shift: int  # s = (u - ph) W + (v - pw): how far on in the flattened (n, h, w) order the element lies
    lo: int  # positions lo..hi-1 of a row of P = N H W whose shifted element is still inside the row
    hi: int


class SamePlan(NamedTuple):
    """A same-size conv's offsets, and the entries of cols that fall in the padding.

    The padding's entries, on the (KH, KW, C, N, H, W) view of cols: the window rows u whose row
    offset du = u - ph takes image rows i + du outside 0..H-1 (`rows[u]`: those rows i, for
    every v) and the window columns v whose dv takes columns j + dv outside 0..W-1
    (`columns[v]`: those j, for every u). Every position whose shifted element lies outside the
    whole row (p + s < 0 or >= P) is among them: with 0 <= i + du < H and 0 <= j + dv < W the
    element is in the same image. So the copies fill lo..hi and the masks fill the rest.
    """

    offsets: tuple[SameOffset, ...]  # in im2col's (u, v) order
    rows: dict[int, slice]  # u -> those image rows i
    columns: dict[int, slice]  # v -> those image columns j


def _outside(d: int, size: int) -> slice:
    """The indices i of 0..size-1 with i + d outside 0..size-1 (all of them when |d| >= size)."""
    return slice(0, min(-d, size)) if d < 0 else slice(max(size - d, 0), size)


@functools.lru_cache(maxsize=64)
def same_plan(kernel: Pair, N: int, H: int, W: int) -> SamePlan:
    """Every kernel offset's shift and inside range, and the padding's entries (SamePlan).

    Worked out once per geometry (a training run has two or three): the slices depend on the shapes
    only, and im2col_same / col2im_same run every step.
    """
    (KH, KW), P = kernel, N * H * W
    (ph, pw), offsets = ((KH - 1) // 2, (KW - 1) // 2), []
    for u in range(KH):
        for v in range(KW):
            s = (u - ph) * W + (v - pw)
            lo = min(max(0, -s), P)
            offsets.append(SameOffset(u, v, s, lo, max(lo, P - max(0, s))))
    rows = {u: _outside(u - ph, H) for u in range(KH) if u != ph}
    columns = {v: _outside(v - pw, W) for v in range(KW) if v != pw}
    return SamePlan(tuple(offsets), rows, columns)


def _zero_padding(cols6: np.ndarray, plan: SamePlan, u: int, v: int) -> None:
    """Set kernel offset (u, v)'s padding entries of cols (its (KH, KW, C, N, H, W) view) to 0.

    Called per offset right after that offset's copy (or right before its add), while its C x P
    slab is still in the cache: zeroing the whole matrix afterwards re-reads every slab from memory
    (the column masks touch one element every W elements).
    """
    if u in plan.rows:
        cols6[u, v, :, :, plan.rows[u]] = 0
    if v in plan.columns:
        cols6[u, v, :, :, :, plan.columns[v]] = 0


def im2col_same(x: np.ndarray, kernel: Pair, work: Workspace | None = None) -> np.ndarray:
    """im2col(pad_images(x, (ph, pw)), kernel, (1, 1)) for the same-size case, by shifted row copies."""
    (N, C, H, W), (KH, KW) = x.shape, kernel
    P = N * H * W
    flat = x.transpose(1, 0, 2, 3).reshape(C, P)  # a copy only when x is not laid out (C, N, H, W)
    cols = empty(work, "cols", (KH, KW, C, P), x.dtype)
    plan, cols6 = same_plan((KH, KW), N, H, W), cols.reshape(KH, KW, C, N, H, W)
    for k in plan.offsets:
        cols[k.u, k.v, :, k.lo : k.hi] = flat[:, k.lo + k.shift : k.hi + k.shift]
        _zero_padding(cols6, plan, k.u, k.v)  # and so every entry outside lo..hi
    return cols.reshape(KH * KW * C, P)


def col2im_same(d_cols: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, work: Workspace | None = None):
    """col2im for the same-size case: the shifted rows added back, the padding's entries left out."""
    (N, C, H, W), (KH, KW) = x_shape, kernel
    P = N * H * W
    plan = same_plan((KH, KW), N, H, W)
    d6 = d_cols.reshape(KH, KW, C, N, H, W)  # splits of d_cols' two axes: a view, whatever its memory order
    d = d6.reshape(KH, KW, C, P)
    dx = empty(work, "dx", (C, P), d_cols.dtype)  # (C, N H W): every add runs along a whole channel
    dx[...] = 0
    for k in plan.offsets:
        _zero_padding(d6, plan, k.u, k.v)  # in place (d_cols is this call's own: conv2d_input_grad's product)
        dx[:, k.lo + k.shift : k.hi + k.shift] += d[k.u, k.v, :, k.lo : k.hi]
    return dx.reshape(C, N, H, W).transpose(1, 0, 2, 3)  # (N, C, H, W) view


def _kernel_matrix(W: np.ndarray) -> np.ndarray:
    """W2[f, (u, v, c)] = W[f, c, u, v]   (F, KH KW C)"""
    return W.transpose(0, 2, 3, 1).reshape(W.shape[0], -1)


def _g_matrix(g: np.ndarray) -> np.ndarray:
    """g_T[f, (n, i, j)] = g[n, f, i, j]   (F, N OH OW); free when g is a view of out's memory."""
    return g.transpose(1, 0, 2, 3).reshape(g.shape[1], -1)


def conv2d_forward(x, W, b, stride: Pair, padding: Pair, work: Workspace | None = None):
    """conv2d_forward_plain as one GEMM: out = W2 @ im2col(xp) + b. Returns (out, cols).

    work: the layer's Workspace (its arrays are handed out again when free), or None (fresh arrays).
    """
    F, _, KH, KW = W.shape
    if is_same_shape((KH, KW), stride, padding):
        cols, out_hw = im2col_same(x, (KH, KW), work), x.shape[2:]  # (KH KW C, N OH OW), no padded copy
    else:
        xp = pad_images(x, padding, work)
        cols = im2col(xp, (KH, KW), stride, work)  # (KH KW C, N OH OW)
        out_hw = (out_size(xp.shape[2], KH, stride[0]), out_size(xp.shape[3], KW, stride[1]))
    out = np.matmul(_kernel_matrix(W), cols, out=empty(work, "out", (F, cols.shape[1]), x.dtype))  # (F, N OH OW)
    out += b[:, None]
    return out.reshape(F, x.shape[0], *out_hw).transpose(1, 0, 2, 3), cols  # (N, F, OH, OW) view


def conv2d_param_grads(g, cols, W):
    """dW = g_T cols^T (one GEMM), db = sum over (n, i, j) of g."""
    g_T = _g_matrix(g)  # (F, N OH OW)
    db = g_T.sum(axis=1)  # first: a small pass right after a big GEMM pays for the GEMM's cold caches
    dW2 = g_T @ cols.T  # (F, KH KW C)
    F, C, KH, KW = W.shape
    return dW2.reshape(F, KH, KW, C).transpose(0, 3, 1, 2).copy(), db


def conv2d_input_grad(g, W, x_shape: tuple[int, ...], stride: Pair, padding: Pair, work: Workspace | None = None):
    """dx = col2im(W2^T g_T) with the padding cut off (one GEMM, KH KW strided adds)."""
    g_T = _g_matrix(g)
    d_cols = empty(work, "d_cols", (W.shape[1] * W.shape[2] * W.shape[3], g_T.shape[1]), g.dtype)
    np.matmul(_kernel_matrix(W).T, g_T, out=d_cols)  # (KH KW C, N OH OW)
    return col2im(d_cols, x_shape, W.shape[2:], stride, padding, work)


def maxpool2d_forward(x, pool: Pair, stride: Pair, work: Workspace | None = None):
    """maxpool2d_forward_plain over the PH PW window offsets. Returns (out, chosen).

    chosen[k][n, c, i, j] is True where window (n, c, i, j)'s first maximum in row-major order is
    its element at offset k = u PW + v (the tie rule): the smallest k whose element equals the
    window's maximum. The elements at each offset are first copied out of x into one contiguous
    array each (win[k]): numpy's ufuncs are 5-10x slower on x's strided views than on contiguous
    arrays, and the maxima and the tie rule then take PH PW passes each over contiguous arrays.
    """
    (PH, PW), (_, _, H, W) = pool, x.shape
    out_hw = (out_size(H, PH, stride[0]), out_size(W, PW, stride[1]))
    slabs = [_offset(x, k // PW, k % PW, out_hw, stride) for k in range(PH * PW)]  # views of x
    # Every array below is laid out in x's memory order (so copies and comparisons run along rows).
    win = [empty_like(work, f"window{k}", slab) for k, slab in enumerate(slabs)]  # win[k] = slab k, contiguous
    for w, slab in zip(win, slabs):
        np.copyto(w, slab)
    out = empty_like(work, "out", win[0])
    np.copyto(out, win[0])
    for w in win[1:]:
        np.maximum(out, w, out=out)
    chosen = tuple(empty_like(work, f"chosen{k}", out, bool) for k in range(len(win)))
    pending = empty_like(work, "pending", out, bool)  # windows whose first maximum is still to be found
    np.equal(win[0], out, out=chosen[0])
    np.logical_not(chosen[0], out=pending)
    for k in range(1, len(win)):
        np.equal(win[k], out, out=chosen[k])
        np.logical_and(chosen[k], pending, out=chosen[k])
        if k + 1 < len(win):
            np.logical_xor(pending, chosen[k], out=pending)
    return out, chosen


def maxpool2d_backward(
    g, chosen, x_shape: tuple[int, ...], pool: Pair, stride: Pair, like: np.ndarray | None = None, work=None
):
    """maxpool2d_backward_plain: g to each window's first maximum, one strided write (or add) per offset.

    chosen: maxpool2d_forward's. like: an array of x's shape whose memory order dx takes (the layer
    passes its input), so the layer below meets the layout it produced. work: the layer's
    Workspace, or None. When the windows tile x (stride = pool), every element is written once
    (the rows and columns no window reaches are set to 0); when they overlap, the offsets add.
    """
    (PH, PW), (sh, sw) = pool, stride
    if work is None:
        dx = np.empty(x_shape, g.dtype) if like is None else np.empty_like(like, dtype=g.dtype)
    else:
        dx = work.empty("dx", x_shape, g.dtype) if like is None else work.empty_like("dx", like, g.dtype)
    (OH, OW), tiles = g.shape[2:], (sh, sw) == (PH, PW)
    if _axis_order(g) != _axis_order(chosen[0]):  # one copy of g now, not PH PW mismatched passes below
        g_in, g = g, empty_like(work, "g", chosen[0], g.dtype)
        np.copyto(g, g_in)
    if tiles:
        dx[:, :, OH * PH :], dx[:, :, :, OW * PW :] = 0, 0  # beyond the last window (H = 11, pool 2)
    else:
        dx[...] = 0
    for k in range(PH * PW):
        target = _offset(dx, k // PW, k % PW, (OH, OW), stride)
        if tiles:  # every element in at most one window: write
            np.multiply(g, chosen[k], out=target)
        else:  # overlapping windows share elements: add
            target += g * chosen[k]
    return dx


def avgpool2d_forward(x, pool: Pair, stride: Pair):
    """avgpool2d_forward_plain as PH PW strided adds: the window sums over PH PW."""
    (PH, PW), (_, _, H, W) = pool, x.shape
    out_hw = (out_size(H, PH, stride[0]), out_size(W, PW, stride[1]))
    total = _offset(x, 0, 0, out_hw, stride).copy()
    for k in range(1, PH * PW):
        total += _offset(x, k // PW, k % PW, out_hw, stride)
    return total / (PH * PW)


def avgpool2d_backward(g, x_shape: tuple[int, ...], pool: Pair, stride: Pair):
    """avgpool2d_backward_plain: g / (PH PW) to every element of its window, one strided add per offset."""
    PH, PW = pool
    share = g / (PH * PW)  # (N, C, OH, OW)
    dx = np.zeros(x_shape, g.dtype)
    for k in range(PH * PW):
        _offset(dx, k // PW, k % PW, g.shape[2:], stride)[...] += share
    return dx
