"""Merge methods as pure tensor functions (math and defaults: shared/reference/anchors.md section 1).

Every method computes in float32 (float64 stays float64) and returns the first input's dtype. Thresholds are exact
k-th values, by selection (never a full float sort) or, in the in-memory merger, looked up in a sorted copy made once
per search (`memo`). The task-vector family runs its elementwise part in one fused kernel (kernels.py). Randomised
methods draw only from the `generator` they are given, always on the CPU (then move the draws to the tensor's
device), so a seed gives the same merge on every run and every device.
"""

from __future__ import annotations

import math

import torch

from evomerge.merge.kernels import Keep, abs_delta, combine, draws16, l1_norms, lincomb
from evomerge.merge.registry import register

# ---- shared helpers ----------------------------------------------------------------------------------------------


def _work(t: torch.Tensor) -> torch.Tensor:
    """The compute copy of a tensor: float64 stays float64, everything else becomes float32."""
    return t.double() if t.dtype == torch.float64 else t.float()


def _kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) of a flat tensor, exactly, by selection (no full sort).

    Large tensors: a strided sample brackets the answer, one counting pass finds its rank below the bracket, and
    `kthvalue` runs on the few entries inside the bracket (about 2x faster than `kthvalue` on the whole tensor).
    When the bracket misses (never for ordinary weights; possible for adversarial layouts), it falls back to the
    full `kthvalue`, so the result is always exact.
    """
    n = x.numel()
    if n < 1 << 16:
        return torch.kthvalue(x, k).values
    sample = x[:: n >> 14].contiguous()
    m, q = sample.numel(), k / n
    margin = int(6 * math.sqrt(m * q * (1 - q))) + 16
    lo_r, hi_r = int(q * m) - margin, int(q * m) + margin
    if lo_r >= 1 and hi_r <= m:
        lo, hi = sample.kthvalue(lo_r).values, sample.kthvalue(hi_r).values
        rank = k - int((x < lo).sum())
        inside = x[(x >= lo) & (x <= hi)]
        if 1 <= rank <= inside.numel():
            return inside.kthvalue(rank).values
    return torch.kthvalue(x, k).values


def _rand_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) numbers shaped like `t`, drawn on the CPU from `generator` so every device agrees."""
    return torch.rand(t.shape, generator=generator, dtype=torch.float32).to(t.device)


def _model_generators(generator: torch.Generator | None, n: int) -> list[torch.Generator]:
    """One CPU generator per model, seeded from the method's generator: model i's draws never depend on the other
    models' densities, so they can be kept across candidates (see `memo` below)."""
    if generator is None:
        raise ValueError("a randomised merge method was called without a torch.Generator (pass the recipe seed)")
    return [torch.Generator().manual_seed(s) for s in torch.randint(0, 2**62, (n,), generator=generator).tolist()]


# `memo`: an optional dict-like scratch space for one tensor, given by the in-memory merger so that work which does
# not depend on the candidate (the sorted |delta| of each model, DARE's draws) is done once per search. It has
# `get(key)`, `fits(nbytes)` and `put(key, value)`; export passes None.


def _sorted_abs(base, t, memo, i: int) -> torch.Tensor | None:
    """The sorted |t - base| kept in the memo (one integer radix sort per search), or None without room for it."""
    sorted_abs = memo.get(("sorted", i)) if memo is not None else None
    if sorted_abs is None and memo is not None and memo.fits(t.numel() * (8 if t.dtype == torch.float64 else 4)):
        a = abs_delta(base, t)
        ints = torch.int64 if a.dtype == torch.float64 else torch.int32
        sorted_abs = a.view(ints).sort().values.view(a.dtype)  # non-negative floats order like their bit patterns
        memo.put(("sorted", i), sorted_abs)
    return sorted_abs


def rank_window_keep(base, t, lo: int, hi: int, memo=None, i: int = 0, ties: str = "ascending") -> Keep:
    """Keep exactly the entries whose rank by |delta| lies in [lo, hi) (0-based, ascending), as mergekit's index
    sorts keep exactly int(density * N) entries. bf16 deltas have few distinct magnitudes, so many entries tie at a
    boundary: ties are split by flat position, as a stable sort would: `ascending` (stable ascending sort, what
    breadcrumbs' window uses) ranks the lower index first, so at the upper boundary the lower indices stay and at
    the lower boundary the higher ones; `descending` (a stable descending sort: TIES' top k) keeps the lower indices
    at the lower boundary. Thresholds come from the memo's sorted copy (a lookup) or by selection; the per-entry
    mask is built only when ties straddle a boundary."""
    n = t.numel()
    if lo <= 0 and hi >= n:
        return Keep()
    sorted_abs = _sorted_abs(base, t, memo, i)
    a = None if sorted_abs is not None else abs_delta(base, t)

    def kth(k):  # the k-th smallest, 1-based
        return float(sorted_abs[k - 1]) if sorted_abs is not None else float(_kth_smallest(a, k))

    def count(v, strict: bool) -> int:  # entries below v (strict) or at most v
        if sorted_abs is not None:
            return int(torch.searchsorted(sorted_abs, torch.tensor([v], dtype=sorted_abs.dtype), right=not strict))
        return int((a < v).sum()) if strict else int((a <= v).sum())

    v_lo = kth(lo + 1) if lo > 0 else None
    v_hi = kth(hi) if hi < n else None
    clean_lo = v_lo is None or (v_lo > 0 and count(v_lo, strict=True) == lo)
    clean_hi = v_hi is None or count(v_hi, strict=False) == hi
    if clean_lo and clean_hi:
        return Keep(lo=0.0 if v_lo is None else v_lo, hi=math.inf if v_hi is None else v_hi)
    a = abs_delta(base, t) if a is None else a
    inside = torch.ones_like(a, dtype=torch.bool)
    if v_lo is not None:
        inside &= a > v_lo
    if v_hi is not None:
        inside &= a < v_hi
    for v, first, last in _tied_ranges(v_lo, v_hi, lo, hi, count, ties):
        eq = a == v
        pos = torch.cumsum(eq, 0, dtype=torch.int64) - 1  # position among the tied entries, by flat index
        inside |= eq & (pos >= first) & (pos < last)
    return Keep(mask=inside.to(a.dtype))


def _tied_ranges(v_lo, v_hi, lo: int, hi: int, count, ties: str):
    """(value, first, last): the tied entries at `value` kept are those at positions first..last-1 among them."""
    out = []
    for v in dict.fromkeys(x for x in (v_lo, v_hi) if x is not None):
        below, n_eq = count(v, strict=True), count(v, strict=False) - count(v, strict=True)
        a, b = max(lo, below) - below, min(hi, below + n_eq) - below  # window ranks held by the tied block
        if ties == "descending":  # a stable descending sort orders the tied block by index, highest rank first
            a, b = n_eq - b, n_eq - a
        out.append((v, a, b))
    return out


def magnitude_keep(base, t, density: float, memo=None, i: int = 0) -> Keep | None:
    """TIES trim: keep exactly the k = max(1, int(density * numel)) largest |delta| of the tensor (ties at the
    threshold broken by position, as a stable descending sort keeps the lower indices); None for density <= 0."""
    if density >= 1:
        return Keep()
    if density <= 0:
        return None
    n = t.numel()
    return rank_window_keep(base, t, n - max(1, int(density * n)), n, memo, i, ties="descending")


def bernoulli_keep(base, t, density: float, generator, memo=None, i: int = 0) -> Keep | None:
    """DARE drop: keep each entry with probability `density`, rounded to a multiple of 2^-16 (16-bit draws; mergekit
    draws in the tensor's dtype, which for bf16 rounds the probability to 8 significant bits).

    With a memo, the draws are kept, and so is the cumulative L1 norm of |delta| by draw value, so the rescale of any
    later candidate is a lookup instead of a pass."""
    cut = round(density * 65536)
    if cut >= 65536:
        return Keep()
    if cut <= 0:
        return None
    draws = memo.get(("draws", i)) if memo is not None else None
    if draws is None:
        draws = draws16(t.numel(), generator, t.device)
        if memo is not None and memo.fits(draws.nbytes):
            memo.put(("draws", i), draws)
    l1 = None
    if memo is not None and ("draws", i) in memo:
        cum = memo.get(("l1_by_draw", i))
        if cum is None:
            by_draw = torch.bincount((draws + 32768).long(), weights=abs_delta(base, t).double(), minlength=65536)
            cum = torch.cat([by_draw.new_zeros(1), by_draw.cumsum(0)]).cpu()
            memo.put(("l1_by_draw", i), cum)
        l1 = (float(cum[65536]), float(cum[cut]))  # kept: the entries whose draw is below the cut
    return Keep(draws=draws, cut=cut - 32768, l1=l1)


def rank_keep(base, t, density: float, epsilon: float, generator, memo=None, i: int = 0) -> Keep | None:
    """DELLA drop: keep probability (density - eps) + 2 eps * r, r = the magnitude rank within each row in [0, 1].

    Rows are dim 0 of the tensor viewed as (shape[0], -1); a 1-D tensor is one row. The ranks and the uniform
    draws do not depend on density or epsilon, so a memo keeps them across candidates.
    """
    if density >= 1:
        return Keep()
    if density <= 0:
        return None
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise ValueError(
            f"della: density {density} and epsilon {epsilon} give keep probabilities outside (0, 1); "
            "keep epsilon < density < 1 - epsilon"
        )
    ranks = memo.get(("ranks", i)) if memo is not None else None
    if ranks is None:
        delta = abs_delta(base, t)
        rows = delta.reshape(1, -1) if t.dim() <= 1 else delta.reshape(t.shape[0], -1)
        cols = rows.shape[1]
        order = rows.argsort(dim=1)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(cols, device=t.device).expand_as(order))
        ranks = (ranks.to(rows.dtype) / (cols - 1) if cols > 1 else torch.zeros_like(rows)).reshape(-1)
        if memo is not None and memo.fits(ranks.nbytes):
            memo.put(("ranks", i), ranks)
    draws = memo.get(("uniform", i)) if memo is not None else None
    if draws is None:
        draws = _rand_like(ranks, generator)
        if memo is not None and memo.fits(draws.nbytes):
            memo.put(("uniform", i), draws)
    keep_p = (density - epsilon) + 2 * epsilon * ranks
    return Keep(mask=(draws < keep_p).to(ranks.dtype))


def breadcrumbs_keep(base, t, density: float, gamma: float, memo=None, i: int = 0) -> Keep | None:
    """Model Breadcrumbs: by |delta| over the tensor, drop the n_bot smallest, keep exactly the next int(density N),
    drop the rest (the int(gamma N) largest outliers); ties at either edge split by position as mergekit's ascending
    sort would with a stable sort. Small tensors (N < 1/gamma) keep their entries (no a6e4028 bug)."""
    n = t.numel()
    n_top, target = int(gamma * n), int(density * n)
    n_bot = max(0, n - target - n_top)
    if target <= 0:
        return None
    return rank_window_keep(base, t, n_bot, n_bot + target, memo, i, ties="ascending")


def _gta(base, tensors, weight, keep, *, elect: bool, normalize: bool, rescale: bool, lam: float):
    """The task-vector family's kernel (anchors.md 1.1): `keep(i)` says which entries of model i's task vector
    survive (None: none), `rescale` matches each kept vector's L1 norm to the original's (skipped when either is
    < 1e-7), then one fused pass (kernels.combine) elects signs, sums, divides and adds the base."""
    keeps = [keep(i) for i in range(len(tensors))]
    ws = [float(w) for w in weight]
    total_w = sum(ws)
    flat_div = total_w if abs(total_w) >= 1e-8 else 1.0
    live = [i for i, k in enumerate(keeps) if k is not None]
    if not live:  # every task vector dropped: the base
        return base.clone()
    coefs = []
    for i in live:
        scale = 1.0
        k = keeps[i]
        if rescale and (any(k.bounds) or k.draws is not None or k.mask is not None):
            n_orig, n_kept = k.l1 if k.l1 is not None else l1_norms(base, tensors[i], k)
            if n_orig >= 1e-7 and n_kept >= 1e-7:
                scale = n_orig / n_kept
        coefs.append(ws[i] * scale)
    return combine(base, [tensors[i] for i in live], [keeps[i] for i in live], coefs, [ws[i] for i in live],
                   lam=float(lam), flat_div=flat_div, elect=elect, normalize=normalize)


# ---- linear family ---------------------------------------------------------------------------------------------


@register("linear", needs_base=False, per_model={"weight": None}, params={"normalize": True})
def linear(base, tensors, *, weight, normalize, generator=None):
    """Model soup: sum_i w_i theta_i, divided by sum_i w_i when `normalize` (refused when that sum is zero)."""
    coeffs = [float(w) for w in weight]
    if normalize:
        total = sum(coeffs)
        if abs(total) < 1e-8:
            raise ValueError(f"linear with normalize=true: weights {list(weight)} sum to zero")
        coeffs = [c / total for c in coeffs]
    return _combine(list(tensors), coeffs)


@register("task_arithmetic", needs_base=True, per_model={"weight": None},
          params={"lambda": 1.0, "normalize": False})
def task_arithmetic(base, tensors, *, weight, normalize, generator=None, **kw):
    """theta_b + lambda * sum_i w_i (theta_i - theta_b), optionally divided by sum_i w_i (guarded when ~0).

    Computed as one linear combination (1 - lambda sum c_i) theta_b + lambda sum c_i theta_i: one pass, no deltas.
    """
    lam = float(kw["lambda"])
    coeffs = [float(w) for w in weight]
    if normalize:
        total = sum(coeffs)
        coeffs = [c / (total if abs(total) >= 1e-8 else 1.0) for c in coeffs]
    return _combine([base, *tensors], [1.0 - lam * sum(coeffs), *(lam * c for c in coeffs)])


def _combine(tensors: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    """sum_j c_j t_j accumulated in float32 (no float32 copies of the inputs), returned in the inputs' dtype."""
    return lincomb(tensors, coeffs)


# ---- sparsified task-vector family ------------------------------------------------------------------------------

_GTA = {"weight": None, "density": 1.0}
_TV = {"needs_base": True, "memoized": True}


@register("ties", per_model=_GTA, params={"lambda": 1.0, "normalize": True, "rescale": False}, **_TV)
def ties(base, tensors, *, weight, density, normalize, rescale, generator=None, memo=None, **kw):
    """TIES: per-tensor magnitude top-k trim, sign election on the weighted sum, disjoint (weighted) mean."""
    return _gta(base, tensors, weight, lambda i: magnitude_keep(base, tensors[i], density[i], memo, i),
                elect=True, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("dare_linear", per_model=_GTA, params={"lambda": 1.0, "normalize": False, "rescale": True},
          randomized=True, **_TV)
def dare_linear(base, tensors, *, weight, density, normalize, rescale, generator=None, memo=None, **kw):
    """DARE: Bernoulli(density) keep mask, whole-tensor L1 rescale, weighted sum."""
    gens = _model_generators(generator, len(tensors))
    return _gta(base, tensors, weight, lambda i: bernoulli_keep(base, tensors[i], density[i], gens[i], memo, i),
                elect=False, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("dare_ties", per_model=_GTA, params={"lambda": 1.0, "normalize": False, "rescale": True},
          randomized=True, **_TV)
def dare_ties(base, tensors, *, weight, density, normalize, rescale, generator=None, memo=None, **kw):
    """DARE with TIES sign election (normalize off by default: a weighted sum of agreeing entries)."""
    gens = _model_generators(generator, len(tensors))
    return _gta(base, tensors, weight, lambda i: bernoulli_keep(base, tensors[i], density[i], gens[i], memo, i),
                elect=True, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("breadcrumbs", per_model={**_GTA, "gamma": 0.01},
          params={"lambda": 1.0, "normalize": False, "rescale": False}, **_TV)
def breadcrumbs(base, tensors, *, weight, density, gamma, normalize, rescale, generator=None, memo=None, **kw):
    """Model Breadcrumbs: drop the smallest and the largest-outlier entries of each task vector, weighted sum."""
    return _gta(base, tensors, weight, lambda i: breadcrumbs_keep(base, tensors[i], density[i], gamma[i], memo, i),
                elect=False, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("breadcrumbs_ties", per_model={**_GTA, "gamma": 0.01},
          params={"lambda": 1.0, "normalize": False, "rescale": False}, **_TV)
def breadcrumbs_ties(base, tensors, *, weight, density, gamma, normalize, rescale, generator=None, memo=None, **kw):
    """Breadcrumbs with TIES sign election."""
    return _gta(base, tensors, weight, lambda i: breadcrumbs_keep(base, tensors[i], density[i], gamma[i], memo, i),
                elect=True, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("della", per_model={**_GTA, "epsilon": 0.15},
          params={"lambda": 1.0, "normalize": True, "rescale": True}, randomized=True, **_TV)
def della(base, tensors, *, weight, density, epsilon, normalize, rescale, generator=None, memo=None, **kw):
    """DELLA: rank-based Bernoulli drop per row, L1 rescale, sign election, weighted mean."""
    gens = _model_generators(generator, len(tensors))
    return _gta(base, tensors, weight, lambda i: rank_keep(base, tensors[i], density[i], epsilon[i], gens[i], memo, i),
                elect=True, normalize=normalize, rescale=rescale, lam=kw["lambda"])


@register("della_linear", per_model={**_GTA, "epsilon": 0.15},
          params={"lambda": 1.0, "normalize": False, "rescale": True}, randomized=True, **_TV)
def della_linear(base, tensors, *, weight, density, epsilon, normalize, rescale, generator=None, memo=None,
                 **kw):
    """DELLA without election: rank-based drop, L1 rescale, weighted sum."""
    gens = _model_generators(generator, len(tensors))
    return _gta(base, tensors, weight, lambda i: rank_keep(base, tensors[i], density[i], epsilon[i], gens[i], memo, i),
                elect=False, normalize=normalize, rescale=rescale, lam=kw["lambda"])


# ---- spherical family -------------------------------------------------------------------------------------------


def _slerp_vectors(v0: torch.Tensor, v1: torch.Tensor, t: float, eps: float) -> torch.Tensor:
    """Row-wise slerp of (R, D) rows with coefficients on the unnormalised rows; lerp where |sin Omega| < eps."""
    n0 = v0.norm(dim=-1, keepdim=True).clamp_min(eps)
    n1 = v1.norm(dim=-1, keepdim=True).clamp_min(eps)
    cos = ((v0 / n0) * (v1 / n1)).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    safe = sin.abs() >= eps
    sin_safe = torch.where(safe, sin, torch.ones_like(sin))
    slerped = (torch.sin((1 - t) * omega) * v0 + torch.sin(t * omega) * v1) / sin_safe
    return torch.where(safe, slerped, (1 - t) * v0 + t * v1)


@register("slerp", needs_base=True, params={"t": None}, min_models=1, max_models=1)
def slerp(base, tensors, *, t, generator=None):
    """Spherical interpolation from the base (t=0) to the other model (t=1) over the flattened tensor; plain lerp
    when the two directions are nearly colinear (|cos| > 0.9995)."""
    t = float(t)
    v0, v1 = _work(base).flatten(), _work(tensors[0]).flatten()
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > 1e-8 else v0
    u1 = v1 / n1 if n1 > 1e-8 else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > 0.9995:
        out = (1 - t) * v0 + t * v1
    else:
        omega = math.acos(max(-1.0, min(1.0, dot)))
        s = math.sin(omega)
        out = (math.sin((1 - t) * omega) / s) * v0 + (math.sin(t * omega) / s) * v1
    return out.reshape(base.shape).to(base.dtype)


@register("nuslerp", needs_base=False, per_model={"weight": 1.0},
          params={"nuslerp_flatten": True, "nuslerp_row_wise": False}, min_models=2, max_models=2)
def nuslerp(base, tensors, *, weight, nuslerp_flatten, nuslerp_row_wise, generator=None):
    """Slerp of two models at t = w2 / (w1 + w2) (0.5 when the sum is ~0); of their task vectors when a base is
    given. Vectors: the flattened tensor, else each slice along the last dim (rows), or along dim 0 if row_wise."""
    w1, w2 = float(weight[0]), float(weight[1])
    t = w2 / (w1 + w2) if abs(w1 + w2) >= 1e-6 else 0.5
    b = _work(base) if base is not None else None
    v0, v1 = _work(tensors[0]), _work(tensors[1])
    if b is not None:
        v0, v1 = v0 - b, v1 - b
    shape = v0.shape
    if nuslerp_flatten or v0.dim() < 2:
        out = _slerp_vectors(v0.reshape(1, -1), v1.reshape(1, -1), t, 1e-8).reshape(shape)
    elif nuslerp_row_wise:
        a, c = v0.transpose(0, -1), v1.transpose(0, -1)
        out = _slerp_vectors(a.reshape(-1, a.shape[-1]), c.reshape(-1, c.shape[-1]), t, 1e-8)
        out = out.reshape(a.shape).transpose(0, -1)
    else:
        out = _slerp_vectors(v0.reshape(-1, shape[-1]), v1.reshape(-1, shape[-1]), t, 1e-8).reshape(shape)
    if b is not None:
        out = out + b
    return out.to(tensors[0].dtype)


@register("multislerp", needs_base=False, per_model={"weight": None},
          params={"normalize_weights": True, "eps": 1e-8}, min_models=1)
def multislerp(base, tensors, *, weight, normalize_weights, eps, generator=None):
    """Barycentric spherical mean: normalised weighted mean direction, exponential map, times the weighted mean
    norm (on task vectors when a base is given)."""
    w = torch.tensor([float(x) for x in weight], dtype=torch.float64)
    if normalize_weights:
        w = w / w.sum()
    b = _work(base).flatten() if base is not None else None
    xs = [_work(t).flatten() for t in tensors]
    if b is not None:
        xs = [x - b for x in xs]
    norms = [x.norm() for x in xs]
    units = [x / (n + eps) for x, n in zip(xs, norms, strict=True)]
    mu = sum(float(wi) * u for wi, u in zip(w, units, strict=True))
    mu_norm = mu.norm()
    if float(mu_norm) < eps:
        if len(xs) == 2:
            out = float(w[0]) * xs[0] + float(w[1]) * xs[1]
        else:
            raise ValueError("multislerp: the weighted mean direction is ~0 (antipodal inputs); cannot merge")
    else:
        mu_hat = mu / mu_norm
        tau = sum(float(wi) * (u - (u * mu_hat).sum() * mu_hat) for wi, u in zip(w, units, strict=True))
        a = tau.norm() + eps
        r = mu_hat * torch.cos(a) + tau * (torch.sin(a) / a)
        out = r * sum(float(wi) * n for wi, n in zip(w, norms, strict=True))
    if b is not None:
        out = out + b
    return out.reshape(tensors[0].shape).to(tensors[0].dtype)


# ---- others -----------------------------------------------------------------------------------------------------


@register("model_stock", needs_base=True, params={"filter_wise": False}, min_models=2)
def model_stock(base, tensors, *, filter_wise, generator=None):
    """Model Stock: t = N c / (1 + (N-1) c), c = the mean pairwise cosine of the task vectors (per row if
    filter_wise); theta = t mean_i(theta_i) + (1 - t) theta_b."""
    b = _work(base)
    shape = b.shape
    as_rows = filter_wise and b.dim() >= 2
    flat = (lambda x: x.reshape(shape[0], -1)) if as_rows else (lambda x: x.reshape(1, -1))
    deltas = [flat(_work(t) - b) for t in tensors]
    n = len(deltas)
    cos_sum, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            denom = (deltas[i].norm(dim=1) * deltas[j].norm(dim=1)).clamp_min(1e-6)
            cos_sum = cos_sum + (deltas[i] * deltas[j]).sum(1) / denom
            pairs += 1
    c = (cos_sum / pairs).clamp(-1.0, 1.0)
    t = (n * c / (1 + (n - 1) * c)).unsqueeze(1)
    mean = sum(flat(_work(x)) for x in tensors) / n
    out = t * mean + (1 - t) * flat(b)
    return out.reshape(shape).to(base.dtype)


@register("passthrough", needs_base=False, per_model={"scale": 1.0}, min_models=1, max_models=1)
def passthrough(base, tensors, *, scale, generator=None):
    """The single input tensor, times its optional `scale`."""
    s = float(scale[0])
    return tensors[0] if s == 1.0 else lincomb([tensors[0]], [s])


# ---- mergekit 0.1.5's newer methods -------------------------------------------------------------------------------
# Definitions: mergekit 0.1.5's merge_methods/{sce,karcher,nearswap,arcee_fusion,ram}.py. All their parameters are
# global; the computation runs in float32 (mergekit computes in the merge dtype, so bf16 merges differ by rounding).


def _task_vectors(base: torch.Tensor, tensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(base in float32, the stacked task vectors theta_i - theta_b in float32)."""
    b = _work(base)
    return b, torch.stack([_work(t) - b for t in tensors])


def _top_k_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask of exactly the k largest entries of `x`; ties at the threshold keep the lowest flat indices (a
    stable descending sort's order; torch.topk's tie order is unspecified)."""
    flat = x.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(x)
    v = _kth_smallest(flat, n - k + 1)  # the k-th largest
    above = flat > v
    eq = flat == v
    room = k - int(above.sum())
    keep = above | (eq & (torch.cumsum(eq, 0, dtype=torch.int64) <= room))
    return keep.to(x.dtype).reshape(x.shape)


@register("sce", needs_base=True, params={"select_topk": 1.0, "int8_mask": False})
def sce(base, tensors, *, select_topk, int8_mask, generator=None):
    """SCE: keep the select_topk fraction of entries (of those that vary at all) with the largest variance across
    the task vectors, elect signs by the summed vectors (TIES), and average the agreeing entries with weights
    proportional to each masked task vector's mean square. `int8_mask` only changes mergekit's mask storage."""
    b, tvs = _task_vectors(base, tensors)
    if select_topk < 1:
        var = tvs.var(dim=0, unbiased=False)
        k = int(int(torch.count_nonzero(var)) * select_topk) if select_topk > 0 else 0
        tvs = tvs * (_top_k_mask(var, k) if k > 0 else torch.zeros_like(var))
    agree = tvs.sign() == torch.where(tvs.sum(0) >= 0, 1.0, -1.0).to(tvs.dtype)
    w = tvs.square().reshape(len(tensors), -1).mean(1)
    total = float(w.sum())
    w = w / total if abs(total) >= 1e-6 else torch.full_like(w, 1.0 / len(tensors))
    ew = w.reshape(-1, *([1] * (tvs.dim() - 1))) * agree
    return (b + (tvs * ew).sum(0) / ew.sum(0).clamp_min(1e-6)).to(base.dtype)


@register("nearswap", needs_base=True, params={"t": None}, min_models=1, max_models=1)
def nearswap(base, tensors, *, t, generator=None):
    """NearSwap: take the other model's value where it is within t of the base's, interpolating with weight
    t / |theta - theta_b| (clipped to [0, 1]) where it is farther."""
    a, b = _work(base), _work(tensors[0])
    w = (float(t) / (a - b).abs().clamp_min(1e-6)).clamp(0.0, 1.0)
    return (w * b + (1 - w) * a).to(base.dtype)


def _ram_parts(base, tensors, epsilon: float):
    """RAM's shared pieces: float32 base, task vectors, which entries contribute (|tv| > epsilon) and how many
    models contribute to each entry."""
    b, tvs = _task_vectors(base, tensors)
    live = tvs.abs() > epsilon
    return b, tvs * live, live, live.sum(0)


@register("ram", needs_base=True, params={"epsilon": 1e-5})
def ram(base, tensors, *, epsilon, generator=None):
    """Reinforced Agent Merging: an entry changed (|tv| > epsilon) by one model takes that model's change, one
    changed by several takes their mean; unchanged entries stay the base's."""
    b, tvs, _live, count = _ram_parts(base, tensors, float(epsilon))
    return (b + tvs.sum(0) / count.clamp_min(1)).to(base.dtype)


@register("ramplus_tl", needs_base=True, params={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5})
def ramplus_tl(base, tensors, *, r, alpha, epsilon, generator=None):
    """RAM+ (tensor-local): as RAM, but each model's unique entries are amplified by 1 + r * min(rho, alpha),
    rho = (its entries shared with other models) / (its unique entries), counted in this tensor."""
    b, tvs, live, count = _ram_parts(base, tensors, float(epsilon))
    unique, shared = count == 1, count > 1
    n = len(tensors)
    rho = (live & shared).reshape(n, -1).sum(1) / (live & unique).reshape(n, -1).sum(1).clamp_min(float(epsilon))
    lam = 1 + float(r) * rho.clamp(0.0, float(alpha))
    lam = lam.to(tvs.dtype).reshape(-1, *([1] * (tvs.dim() - 1)))
    merged = (tvs * (unique * lam + shared / count.clamp_min(1))).sum(0)
    return (b + merged).to(base.dtype)


@register("karcher", needs_base=False, params={"max_iter": 10, "tol": 1e-5})
def karcher(base, tensors, *, max_iter, tol, generator=None):
    """Karcher (Riemannian) mean on the unit sphere of the whole tensors, with equal weights, times the mean norm.
    As in mergekit, every input is averaged, the base model included when the recipe has one."""
    xs = ([base] if base is not None else []) + list(tensors)
    if len(xs) == 1:
        return xs[0]
    tol = float(tol)
    vs = [_work(x).reshape(-1) for x in xs]
    alpha = 1.0 / len(vs)
    norms = [float(v.norm()) for v in vs]
    units = [v / n for v, n in zip(vs, norms, strict=True) if n > tol]
    scale = alpha * sum(norms)
    if not units:
        return torch.zeros_like(xs[0])
    u = sum(units) / len(units)
    u = units[0].clone() if float(u.norm()) < tol else u / u.norm()
    for _ in range(int(max_iter)):
        tangent = torch.zeros_like(u)
        for x in units:
            dot = float((u * x).sum().clamp(-1.0, 1.0))
            theta = math.acos(max(-1.0, min(1.0, dot)))
            if theta >= tol:
                tangent += (1.0 / len(units)) * (theta / math.sin(theta)) * (x - dot * u)
        step = float(tangent.norm())
        if step < tol:
            break
        u = math.cos(step) * u + math.sin(step) * (tangent / step)
        if float(u.norm()) > tol:
            u = u / u.norm()
    return (scale * u).reshape(xs[0].shape).to(xs[0].dtype)


@register("arcee_fusion", needs_base=True, min_models=1, max_models=1)
def arcee_fusion(base, tensors, *, generator=None):
    """Arcee Fusion: importance = |delta| x KL(softmax(theta) || softmax(theta_b)) along the last dim; keep the
    delta only where importance >= median + 1.5 IQR (quantiles at sorted index floor(q (n - 1))). Quantiles are
    exact; mergekit samples 10^6 entries at random above 10^6, so bigger tensors match it only approximately."""
    a, b = _work(base), _work(tensors[0])
    p = torch.softmax(b, dim=-1) + 1e-8
    q = torch.softmax(a, dim=-1) + 1e-8
    importance = (b - a).abs() * (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    flat = importance.reshape(-1)
    n = flat.numel()
    q1, median, q3 = (float(_kth_smallest(flat, int(f * (n - 1)) + 1)) for f in (0.25, 0.5, 0.75))
    keep = importance >= median + 1.5 * (q3 - q1)
    return (a + (b - a) * keep).to(base.dtype)
