"""Fused elementwise kernels for the task-vector family (ties, dare_*, breadcrumbs*, della*).

Why: written as separate torch ops, a TIES merge makes about twenty passes over memory per model; fused, it makes
one. Large tensors go through `torch.compile` (inductor turns each function below into one loop); small tensors, and
machines where compiling fails, run the same functions eagerly, block by block so temporaries stay in cache. Both
paths compute the same formula in float32 (float64 stays float64); they can differ in the last bit where the
compiler contracts a multiply-add. `EVOMERGE_COMPILE=0` turns compiling off.

Which entries of task vector i survive is described by `Keep`: a magnitude range (TIES, breadcrumbs), 16-bit uniform
draws under a cut (DARE), or an explicit mask (DELLA), combined with AND.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

COMPILE_MIN = 1 << 20  # elements; below this, eager blocks beat the compile and the per-call guard checks
BLOCK = 1 << 14  # elements per eager block (64 KB of float32: under malloc's mmap threshold, in L2)


@dataclass(frozen=True)
class Keep:
    """Entries of one task vector d that survive: lo <= |d| <= hi, and draws < cut (DARE), and mask (DELLA)."""

    lo: float = 0.0
    hi: float = math.inf
    draws: torch.Tensor | None = None  # flat float32 holding uniform integer draws on [-32768, 32767]
    cut: int = 0  # keep where draws < cut, so P(keep) = (cut + 32768) / 65536
    mask: torch.Tensor | None = None  # flat, 1.0 = keep, 0.0 = drop
    l1: tuple[float, float] | None = None  # (||d||_1, ||kept(d)||_1) when already known

    @property
    def bounds(self) -> tuple[bool, bool]:
        """(has a lower bound, has an upper bound) on |d|."""
        return self.lo > 0, self.hi < math.inf


def work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _step(x):
    """1.0 where x > 0, else 0.0. Masks are kept as floats: eager CPU kernels on bool tensors are several times
    slower than float arithmetic, and compiled kernels vectorise float selects best."""
    return torch.sign(torch.relu(x))


def _keep_factor(d, lo_below, hi, has_lo: bool, has_hi: bool, draws, cut, mask):
    """1.0 for the entries of d that survive, 0.0 for the others, or None when all survive."""
    keep = None
    if has_lo or has_hi:
        a = d.abs()
        if has_lo:  # |d| >= lo, i.e. |d| > the float just below lo
            keep = _step(a - lo_below)
        if has_hi:  # |d| <= hi
            k = 1 - _step(a - hi)
            keep = k if keep is None else keep * k
    if draws is not None:  # integer-valued draws: cut - draws >= 1 exactly when draws < cut
        k = torch.clamp(cut - draws, 0, 1)
        keep = k if keep is None else keep * k
    if mask is not None:
        keep = mask if keep is None else keep * mask
    return keep


def _combine_math(b, ts, lo, hi, flags, draws, cuts, masks, coef, w, lam, flat_div, elect: bool, normalize: bool):
    """theta_b + lam * (elected or plain) sum of coef_i * kept(d_i), optionally divided: anchors.md section 1.1."""
    bf = b.to(lo.dtype)
    us = []
    for i, t in enumerate(ts):
        d = t.to(lo.dtype) - bf
        keep = _keep_factor(d, lo[i], hi[i], *flags[i], draws[i], cuts[i], masks[i])
        u = d * coef[i]
        us.append(u if keep is None else u * keep)
    total = us[0]
    for u in us[1:]:
        total = total + u
    if elect:
        # elected sign: +1 where the sum is +0 (an exact cancellation); -0 only when every entry is zero, and zero
        # entries never agree
        sign = torch.ones_like(total).copysign(total)
        delta = divisor = None
        for i, u in enumerate(us):
            agree = _step(u * sign)
            delta = u * agree if delta is None else delta + u * agree
            divisor = agree * w[i] if divisor is None else divisor + agree * w[i]
        if normalize:
            delta = delta / (divisor + (1 - torch.sign(divisor.abs())))  # a zero divisor counts as 1
    else:
        delta = total / flat_div if normalize else total
    return (delta * lam + bf).to(b.dtype)


def _lincomb_math(ts, coef):
    acc = ts[0].to(coef.dtype) * coef[0]
    for i, t in enumerate(ts[1:], 1):
        acc = acc + t.to(coef.dtype) * coef[i]
    return acc.to(ts[0].dtype)


def lincomb(tensors: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    """sum_j c_j t_j accumulated in float32 (float64 stays float64), returned in the first tensor's dtype."""
    first, n = tensors[0], tensors[0].numel()
    coef = torch.tensor(coeffs, dtype=work_dtype(first), device=first.device)
    flat = tuple(t.reshape(-1) for t in tensors)
    out = _call(_lincomb_math, n, (flat, coef), {})
    if out is None:  # eager: in-place multiply-adds on a float32 block (the same sums, one rounding per step)
        out = torch.empty_like(flat[0])
        acc = torch.empty(min(n, BLOCK), dtype=coef.dtype, device=first.device)
        for s in range(0, n, BLOCK):
            part = _part(flat, slice(s, s + BLOCK))
            a = acc[:part[0].numel()]
            a.copy_(part[0]).mul_(coeffs[0])
            for t, c in zip(part[1:], coeffs[1:], strict=True):
                a.add_(t, alpha=c)
            out[s:s + BLOCK] = a
    return out.reshape(first.shape)


def _l1_math(b, t, lo, hi, flags, draws, cut, mask):
    """(sum |d|, sum over kept entries of |d|) for the L1 rescale, accumulated in float64."""
    a = (t.to(lo.dtype) - b.to(lo.dtype)).abs()
    keep = _keep_factor(a, lo, hi, *flags, draws, cut, mask)
    kept = a if keep is None else a * keep
    return a.to(torch.float64).sum(), kept.to(torch.float64).sum()


_compiled: dict = {}
_compile_ok = os.environ.get("EVOMERGE_COMPILE", "1") != "0"


@contextmanager
def compiling(enabled: bool):
    """Turn compiling on or off for a block (export of a small model: the one-off compile, ~10-40 s, costs more
    than it saves)."""
    global COMPILE_MIN
    saved = COMPILE_MIN
    COMPILE_MIN = saved if enabled else 1 << 62
    try:
        yield
    finally:
        COMPILE_MIN = saved


def _compiled_fn(fn):
    if fn not in _compiled:
        import torch._dynamo

        # one compiled variant per structure (number of models, which keep rules, flags): allow plenty of them
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def _call(fn, n: int, args: tuple, kwargs: dict):
    """Run `fn` compiled when the tensor is large and compiling works here, else None (caller runs it eagerly)."""
    global _compile_ok
    if not (_compile_ok and n >= COMPILE_MIN):
        return None
    try:
        return _compiled_fn(fn)(*args, **kwargs)
    except Exception as e:  # no C++ compiler, unsupported device or dtype: merge eagerly from now on
        _compile_ok = False
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); merging eagerly (slower). "
                      "Set EVOMERGE_COMPILE=0 to skip the attempt.", stacklevel=3)
        return None


def _params(keeps: list[Keep], coefs: list[float], weights: list[float], dtype, device):
    def vec(xs):
        return torch.tensor(xs, dtype=dtype, device=device)

    lo_below = torch.nextafter(vec([k.lo for k in keeps]), vec([-math.inf] * len(keeps)))
    flags = tuple(k.bounds for k in keeps)
    return (lo_below, vec([k.hi for k in keeps]), flags,
            tuple(k.draws for k in keeps), vec([k.cut for k in keeps]), tuple(k.mask for k in keeps), vec(coefs),
            vec(weights))


def _part(xs: tuple, sl: slice) -> tuple:
    return tuple(None if x is None else x[sl] for x in xs)


def combine(base: torch.Tensor, tensors: list[torch.Tensor], keeps: list[Keep], coefs: list[float],
            weights: list[float], *, lam: float, flat_div: float, elect: bool, normalize: bool) -> torch.Tensor:
    """The merged tensor: base + lam * (elected) combination of coef_i * kept(tensor_i - base)."""
    dtype, dev, n = work_dtype(base), base.device, base.numel()
    lo, hi, flags, draws, cuts, masks, coef, w = _params(keeps, coefs, weights, dtype, dev)
    b = base.reshape(-1)
    ts = tuple(t.reshape(-1) for t in tensors)
    lam_t, div_t = torch.tensor(lam, dtype=dtype, device=dev), torch.tensor(flat_div, dtype=dtype, device=dev)
    kw = {"elect": elect, "normalize": normalize}
    out = _call(_combine_math, n, (b, ts, lo, hi, flags, draws, cuts, masks, coef, w, lam_t, div_t), kw)
    if out is None:
        out = torch.empty_like(b)
        for s in range(0, n, BLOCK):
            sl = slice(s, s + BLOCK)
            out[sl] = _combine_math(b[sl], _part(ts, sl), lo, hi, flags, _part(draws, sl), cuts, _part(masks, sl),
                                    coef, w, lam_t, div_t, **kw)
    return out.reshape(base.shape)


def l1_norms(base: torch.Tensor, tensor: torch.Tensor, keep: Keep) -> tuple[float, float]:
    """(||d||_1, ||kept(d)||_1) of d = tensor - base, accumulated in float64."""
    dtype, n = work_dtype(base), base.numel()
    lo, hi, flags, draws, cuts, masks, _, _ = _params([keep], [1.0], [1.0], dtype, base.device)
    args = (base.reshape(-1), tensor.reshape(-1), lo[0], hi[0], flags[0], draws[0], cuts[0], masks[0])
    res = _call(_l1_math, n, args, {})
    if res is None:
        total = kept = 0.0
        for s in range(0, n, BLOCK):
            sl = slice(s, s + BLOCK)
            a, k = _l1_math(args[0][sl], args[1][sl], *args[2:5], None if draws[0] is None else draws[0][sl],
                            args[6], None if masks[0] is None else masks[0][sl])
            total, kept = total + float(a), kept + float(k)
        return total, kept
    return float(res[0]), float(res[1])


def _sum_math(x, dtype: torch.dtype):
    return x.to(dtype).sum()


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in `t`. Its float32 sum is finite exactly when every entry is, unless the sum overflows: only then
    is the slower entry-by-entry test needed."""
    dtype = work_dtype(t)
    total = _call(_sum_math, t.numel(), (t.reshape(-1), dtype), {})
    if total is None:
        total = t.to(dtype).sum()  # converting first is ~3x faster than sum(dtype=...) on bf16 here
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def abs_delta(base: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """|tensor - base| flattened, in the work dtype (the values TIES and breadcrumbs rank)."""
    out = tensor.reshape(-1).to(work_dtype(base), copy=True)
    return out.sub_(base.reshape(-1)).abs_()


def draws16(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """n uniform 16-bit integer draws from `generator`, made on the CPU (so every device gets the same), four per
    64-bit draw, held as float32 (compiled kernels vectorise float masks, not int16 ones)."""
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), generator=generator, dtype=torch.int64)
    return words.view(torch.int16)[:n].to(device=device, dtype=torch.float32)
