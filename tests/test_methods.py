"""Each merge method against a slow, direct reference written here from the definitions (anchors.md section 1).

References work on Python floats (float64) entry by entry, with sorts instead of selection, so they share no code
with evomerge/merge/methods.py. Randomised methods: the reference makes the same draws as the documented scheme (one
CPU generator per model, seeded by n int draws from the method's generator; DARE draws 16-bit integers, four per
64-bit word, DELLA one `torch.rand` shaped like the tensor), then applies its own mask logic.
"""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.merge.registry import METHODS, get_method

get_method("linear")  # registers the built-ins


def call(name, base, tensors, seed=0, **kw):
    m = METHODS[name]
    per_model = {k: v for k, v in kw.items() if k in m.per_model}
    params = {k: v for k, v in kw.items() if k not in m.per_model}
    args = m.resolve(per_model, params, len(tensors), "test")
    gen = torch.Generator().manual_seed(seed) if m.randomized else None
    return m.fn(base, tensors, generator=gen, **args)


def close(out, ref, atol=1e-5):
    ref = torch.tensor(ref, dtype=torch.float64).reshape(out.shape)
    assert torch.allclose(out.double(), ref, atol=atol, rtol=1e-5), (out.double() - ref).abs().max()


def flat(t):
    return [float(x) for x in t.double().flatten()]


@pytest.fixture
def trio():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 9, generator=g)
    experts = [base + 0.3 * torch.randn(6, 9, generator=g) for _ in range(3)]
    return base, experts


# ---- references ------------------------------------------------------------------------------------------------


def ref_topk(d, rho):
    if rho >= 1:
        return list(d)
    if rho <= 0:
        return [0.0] * len(d)
    k = max(1, int(rho * len(d)))
    keep = set(sorted(range(len(d)), key=lambda j: -abs(d[j]))[:k])
    return [d[j] if j in keep else 0.0 for j in range(len(d))]


def ref_bernoulli(d, rho, u):
    if rho >= 1:
        return list(d)
    if rho <= 0:
        return [0.0] * len(d)
    return [d[j] if u[j] < rho else 0.0 for j in range(len(d))]


def model_generators(seed, n):
    seeds = torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


def model_draws16(seed, n, numel):
    out = []
    for g in model_generators(seed, n):
        words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), generator=g, dtype=torch.int64)
        out.append([int(x) for x in words.view(torch.int16)[:numel]])
    return out


def ref_della(d, cols, rho, eps, u):
    if rho >= 1:
        return list(d)
    out = []
    for r0 in range(0, len(d), cols):
        row, ur = d[r0:r0 + cols], u[r0:r0 + cols]
        order = sorted(range(cols), key=lambda j: abs(row[j]))
        rank = {j: i for i, j in enumerate(order)}
        for j in range(cols):
            p = (rho - eps) + 2 * eps * rank[j] / (cols - 1)
            out.append(row[j] if ur[j] < p else 0.0)
    return out


def ref_breadcrumbs(d, rho, gamma):
    n = len(d)
    n_top, target = int(gamma * n), int(rho * n)
    n_bot = max(0, n - target - n_top)
    order = sorted(range(n), key=lambda j: abs(d[j]))
    keep = set(order[n_bot:n_bot + target])
    return [d[j] if j in keep else 0.0 for j in range(n)]


def ref_l1(kept, orig):
    a, b = sum(abs(x) for x in orig), sum(abs(x) for x in kept)
    if a < 1e-7 or b < 1e-7:
        return kept
    return [x * a / b for x in kept]


def ref_gta(base, experts, weights, sparsify, elect, normalize, rescale=False, lam=1.0):
    b = flat(base)
    deltas = []
    for i, e in enumerate(experts):
        d = [x - y for x, y in zip(flat(e), b, strict=True)]
        s = sparsify(i, d)
        deltas.append(ref_l1(s, d) if rescale else s)
    out = []
    for j in range(len(b)):
        u = [weights[i] * deltas[i][j] for i in range(len(experts))]
        if elect:
            sign = 1.0 if sum(u) >= 0 else -1.0
            agree = [i for i in range(len(u)) if u[i] != 0 and math.copysign(1.0, u[i]) == sign]
            delta = sum(u[i] for i in agree)
            div = sum(weights[i] for i in agree) or 1.0
        else:
            delta = sum(u)
            div = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
        if normalize:
            delta /= div
        out.append(b[j] + lam * delta)
    return out


def ref_slerp_vec(a, c, t, eps):
    na, nc = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in c))
    cos = sum(x * y for x, y in zip(a, c, strict=True)) / (max(na, eps) * max(nc, eps))
    cos = max(-1.0, min(1.0, cos))
    om = math.acos(cos)
    if abs(math.sin(om)) < eps:
        return [(1 - t) * x + t * y for x, y in zip(a, c, strict=True)]
    return [(math.sin((1 - t) * om) * x + math.sin(t * om) * y) / math.sin(om) for x, y in zip(a, c, strict=True)]


# ---- linear family ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_linear(trio, normalize):
    _, ex = trio
    w = [0.5, -0.2, 1.1]
    ref = [sum(w[i] * flat(ex[i])[j] for i in range(3)) / (sum(w) if normalize else 1) for j in range(54)]
    close(call("linear", None, ex, weight=w, normalize=normalize), ref)


def test_linear_zero_sum_refused(trio):
    with pytest.raises(ValueError, match="sum to zero"):
        call("linear", None, trio[1][:2], weight=[1.0, -1.0])


@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic(trio, normalize):
    base, ex = trio
    w, lam = [0.7, -0.3, 0.4], 0.6
    ref = ref_gta(base, ex, w, lambda i, d: d, elect=False, normalize=normalize, lam=lam)
    close(call("task_arithmetic", base, ex, weight=w, normalize=normalize, **{"lambda": lam}), ref)


def test_task_arithmetic_bf16_dtype(trio):
    base, ex = trio
    out = call("task_arithmetic", base.bfloat16(), [e.bfloat16() for e in ex], weight=[1, 1, 1])
    assert out.dtype == torch.bfloat16


# ---- sparsified task-vector family ------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, 0.3, 0.5, 1.0])
def test_ties(trio, density):
    base, ex = trio
    w = [0.9, 0.4, -0.5]
    rho = [density, 0.6, density]
    ref = ref_gta(base, ex, w, lambda i, d: ref_topk(d, rho[i]), elect=True, normalize=True)
    close(call("ties", base, ex, weight=w, density=rho), ref)


def test_ties_rescale_and_unnormalised(trio):
    base, ex = trio
    w, rho = [1.0, 0.5, 0.8], [0.3, 0.5, 0.7]
    ref = ref_gta(base, ex, w, lambda i, d: ref_topk(d, rho[i]), elect=True, normalize=False, rescale=True, lam=0.8)
    close(call("ties", base, ex, weight=w, density=rho, normalize=False, rescale=True, **{"lambda": 0.8}), ref)


def test_ties_scale_invariant_weights(trio):
    base, ex = trio
    a = call("ties", base, ex, weight=[0.2, 0.3, 0.5], density=[0.5] * 3)
    b = call("ties", base, ex, weight=[2.0, 3.0, 5.0], density=[0.5] * 3)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name,elect", [("dare_linear", False), ("dare_ties", True)])
@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
def test_dare(trio, name, elect, density):
    base, ex = trio
    w, rho = [0.6, 0.9, 0.3], [density, 0.5, 0.7]
    # keep entry j of model i when its 16-bit draw (as an unsigned number) is below round(rho_i * 65536)
    u = [[(x + 32768) / 65536 for x in draws] for draws in model_draws16(3, 3, base.numel())]
    rho_q = [round(r * 65536) / 65536 for r in rho]
    ref = ref_gta(base, ex, w, lambda i, d: ref_bernoulli(d, rho_q[i], u[i]), elect=elect, normalize=False,
                  rescale=True)
    close(call(name, base, ex, seed=3, weight=w, density=rho), ref)


def test_dare_statistics():
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(20000)
    ex = [torch.randn(20000, generator=g)]
    out = call("dare_linear", base, ex, seed=1, weight=[1.0], density=[0.3])
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.02
    assert abs(out.abs().sum().item() / ex[0].abs().sum().item() - 1.0) < 1e-4  # L1 rescale


def test_randomised_reproducible(trio):
    base, ex = trio
    for name in ("dare_ties", "della"):
        a = call(name, base, ex, seed=5, weight=[1, 1, 1], density=[0.5] * 3)
        b = call(name, base, ex, seed=5, weight=[1, 1, 1], density=[0.5] * 3)
        c = call(name, base, ex, seed=6, weight=[1, 1, 1], density=[0.5] * 3)
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name,elect,normalize", [("della", True, True), ("della_linear", False, False)])
def test_della(trio, name, elect, normalize):
    base, ex = trio
    w, rho, eps = [0.5, 1.0, 0.7], [0.5, 0.3, 0.7], [0.15, 0.1, 0.2]
    u = [flat(torch.rand(base.shape, generator=g)) for g in model_generators(11, 3)]
    ref = ref_gta(base, ex, w, lambda i, d: ref_della(d, 9, rho[i], eps[i], u[i]), elect=elect,
                  normalize=normalize, rescale=True)
    close(call(name, base, ex, seed=11, weight=w, density=rho, epsilon=eps), ref)


def test_della_bad_epsilon(trio):
    base, ex = trio
    with pytest.raises(ValueError, match="epsilon"):
        call("della", base, ex, weight=[1] * 3, density=[0.1] * 3, epsilon=[0.15] * 3)


@pytest.fixture
def tied_trio():
    """Deltas on a coarse grid (as bf16 deltas are: few distinct magnitudes), with zeros: heavy ties everywhere."""
    g = torch.Generator().manual_seed(11)
    base = torch.round(256 * torch.randn(12, 20, generator=g)) / 256  # on a grid too: deltas are exact in float32
    experts = [base + torch.round(3 * torch.randn(12, 20, generator=g)) / 64 for _ in range(3)]
    return base, experts


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.77])
def test_ties_keeps_exactly_k_with_ties(tied_trio, density):
    """mergekit keeps exactly int(density N) entries; ties broken by position as a stable descending sort."""
    base, ex = tied_trio
    w = [0.75, 0.5, 0.25]  # exact in float32, so sign elections on exact-zero sums agree with the reference
    ref = ref_gta(base, ex, w, lambda i, d: ref_topk(d, density), elect=True, normalize=True)
    close(call("ties", base, ex, weight=w, density=[density] * 3), ref)


@pytest.mark.parametrize("density,gamma", [(0.5, 0.05), (0.3, 0.2), (0.8, 0.1)])
def test_breadcrumbs_keeps_exactly_the_window_with_ties(tied_trio, density, gamma):
    base, ex = tied_trio
    w = [0.75, 0.5, 0.25]
    ref = ref_gta(base, ex, w, lambda i, d: ref_breadcrumbs(d, density, gamma), elect=False, normalize=False)
    close(call("breadcrumbs", base, ex, weight=w, density=[density] * 3, gamma=[gamma] * 3), ref)


class _Memo(dict):
    def fits(self, nbytes):
        return True

    def put(self, key, value):
        self[key] = value


@pytest.mark.parametrize("memo", [None, "memo"])
def test_keep_counts_on_bf16_weights(memo):
    """Real bf16 deltas (sigma 5e-4): the kept set is exactly the stable-sort top k / breadcrumbs window, with the
    memo's sorted copy (in-memory search) and without it (export), identically."""
    import numpy as np

    from evomerge.merge.kernels import abs_delta
    from evomerge.merge.methods import breadcrumbs_keep, magnitude_keep

    g = torch.Generator().manual_seed(5)
    base = torch.randn(256, 128, generator=g).to(torch.bfloat16)
    t = (base.float() + 5e-4 * torch.randn(256, 128, generator=g)).to(torch.bfloat16)
    a = abs_delta(base, t).numpy()
    n = a.size
    assert len(np.unique(a)) < n / 100  # the premise: heavy ties

    def kept(keep):
        return keep.mask.numpy() > 0 if keep.mask is not None else (a >= keep.lo) & (a <= keep.hi)

    def window(order, lo, hi):
        m = np.zeros(n, bool)
        m[order[lo:hi]] = True
        return m

    for density in (0.1, 0.3, 0.9):
        k = int(density * n)
        got = kept(magnitude_keep(base, t, density, _Memo() if memo else None))
        assert got.sum() == k and (got == window(np.argsort(-a, kind="stable"), 0, k)).all()
        target, n_top = int(density * n), int(0.05 * n)
        n_bot = max(0, n - target - n_top)
        got = kept(breadcrumbs_keep(base, t, density, 0.05, _Memo() if memo else None))
        assert got.sum() == target and (got == window(np.argsort(a, kind="stable"), n_bot, n_bot + target)).all()


@pytest.mark.parametrize("name,elect", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.01), (0.6, 0.1), (0.9, 0.2), (0.0, 0.01), (1.0, 0.0)])
def test_breadcrumbs(trio, name, elect, density, gamma):
    base, ex = trio
    w = [0.8, 0.5, 0.6]
    ref = ref_gta(base, ex, w, lambda i, d: ref_breadcrumbs(d, density, gamma), elect=elect, normalize=False)
    close(call(name, base, ex, weight=w, density=[density] * 3, gamma=[gamma] * 3), ref)


def test_breadcrumbs_small_tensor_keeps_entries():
    """The a6e4028 bug dropped every entry of tensors with fewer than 1/gamma entries; 64 entries keep 32 here."""
    g = torch.Generator().manual_seed(0)
    base, ex = torch.zeros(64), [torch.randn(64, generator=g)]
    out = call("breadcrumbs", base, ex, weight=[1.0], density=[0.5], gamma=[0.01])
    assert int((out != 0).sum()) == 32


@pytest.mark.parametrize("name", ["ties", "dare_ties", "dare_linear", "della", "della_linear", "breadcrumbs",
                                  "breadcrumbs_ties", "task_arithmetic"])
def test_all_zero_task_vectors_give_base(trio, name):
    base = trio[0]
    out = call(name, base, [base.clone(), base.clone()], weight=[0.5, 0.7], density=[0.5, 0.5]) \
        if name != "task_arithmetic" else call(name, base, [base.clone(), base.clone()], weight=[0.5, 0.7])
    assert torch.allclose(out, base, atol=1e-6)


def test_single_expert_ties_density1_is_expert(trio):
    base, ex = trio
    out = call("ties", base, ex[:1], weight=[0.4], density=[1.0])
    assert torch.allclose(out, ex[0], atol=1e-5)  # normalize: the lone agreeing entry enters at full strength


# ---- spherical family -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp(trio, t):
    base, ex = trio
    b, e = flat(base), flat(ex[0])
    ref = ref_slerp_vec(b, e, t, 1e-12)
    close(call("slerp", base, ex[:1], t=t), ref)


def test_slerp_colinear_falls_back_to_lerp(trio):
    base = trio[0]
    other = base * 1.5 + 1e-4 * torch.ones_like(base)
    out = call("slerp", base, [other], t=0.25)
    close(out, [0.75 * x + 0.25 * y for x, y in zip(flat(base), flat(other), strict=True)])


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp(trio, flatten, row_wise, with_base):
    base, ex = trio
    w = [0.3, 0.9]
    t = 0.9 / 1.2
    a, c = ex[0].double(), ex[1].double()
    if with_base:
        a, c = a - base.double(), c - base.double()
    if flatten:
        out = ref_slerp_vec(flat(a), flat(c), t, 1e-8)
    elif not row_wise:  # each row (slice along the last dim) separately
        out = [x for r in range(6) for x in ref_slerp_vec(flat(a[r]), flat(c[r]), t, 1e-8)]
    else:  # each column separately
        cols = [ref_slerp_vec(flat(a[:, j]), flat(c[:, j]), t, 1e-8) for j in range(9)]
        out = [cols[j][r] for r in range(6) for j in range(9)]
    if with_base:
        out = [x + y for x, y in zip(out, flat(base), strict=True)]
    got = call("nuslerp", base if with_base else None, ex[:2], weight=w, nuslerp_flatten=flatten,
               nuslerp_row_wise=row_wise)
    close(got, out)


def test_nuslerp_zero_weights_use_half(trio):
    _, ex = trio
    a = call("nuslerp", None, ex[:2], weight=[1.0, -1.0])
    b = call("nuslerp", None, ex[:2], weight=[1.0, 1.0])
    assert torch.allclose(a, b)


@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp(trio, with_base):
    """Closed form (anchors 1.2): the normalised weighted mean direction times the weighted mean norm."""
    base, ex = trio
    w = [1.0, 2.0, 1.0]
    ws = [x / sum(w) for x in w]
    xs = [flat(e.double() - base.double()) if with_base else flat(e) for e in ex]
    norms = [math.sqrt(sum(v * v for v in x)) for x in xs]
    mu = [sum(ws[i] * xs[i][j] / (norms[i] + 1e-8) for i in range(3)) for j in range(54)]
    mn = math.sqrt(sum(v * v for v in mu))
    scale = sum(ws[i] * norms[i] for i in range(3))
    ref = [m / mn * scale for m in mu]
    if with_base:
        ref = [r + b for r, b in zip(ref, flat(base), strict=True)]
    close(call("multislerp", base if with_base else None, ex, weight=w), ref, atol=1e-4)


def test_multislerp_antipodal(trio):
    x = trio[0]
    out = call("multislerp", None, [x, -x], weight=[0.5, 0.5])
    assert torch.allclose(out, torch.zeros_like(x), atol=1e-6)  # N=2 falls back to the weighted sum
    with pytest.raises(ValueError, match="antipodal"):
        call("multislerp", None, [x, -x, x * 0], weight=[0.5, 0.5, 0.0])


# ---- others -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(trio, filter_wise):
    base, ex = trio
    b = base.double()
    ds = [e.double() - b for e in ex]
    rows = range(6) if filter_wise else [None]
    out = torch.empty(6, 9, dtype=torch.float64)
    for r in rows:
        sl = (slice(None),) if r is None else (r,)
        vs = [flat(d[sl]) for d in ds]
        cos = []
        for i in range(3):
            for j in range(i + 1, 3):
                dot = sum(x * y for x, y in zip(vs[i], vs[j], strict=True))
                n = math.sqrt(sum(x * x for x in vs[i])) * math.sqrt(sum(x * x for x in vs[j]))
                cos.append(dot / max(n, 1e-6))
        c = max(-1.0, min(1.0, sum(cos) / len(cos)))
        t = 3 * c / (1 + 2 * c)
        mean = sum(e.double()[sl] for e in ex) / 3
        out[sl] = t * mean + (1 - t) * b[sl]
    close(call("model_stock", base, ex, filter_wise=filter_wise), flat(out))


def test_model_stock_needs_two(trio):
    with pytest.raises(ValueError, match="takes 2"):
        METHODS["model_stock"].resolve({}, {}, 1, "test")


def test_passthrough(trio):
    _, ex = trio
    assert torch.equal(call("passthrough", None, ex[:1]), ex[0])
    close(call("passthrough", None, ex[:1], scale=[0.5]), [0.5 * x for x in flat(ex[0])])
    with pytest.raises(ValueError, match="takes 1..1"):
        METHODS["passthrough"].resolve({}, {}, 2, "test")


def test_registry_refuses_unknown_and_bad_types():
    m = METHODS["ties"]
    with pytest.raises(ValueError, match="no parameter"):
        m.resolve({"weight": [1.0]}, {"densty": 0.5}, 1, "here")
    with pytest.raises(ValueError, match="true/false"):
        m.resolve({"weight": [1.0]}, {"normalize": "yes"}, 1, "here")
    with pytest.raises(ValueError, match="needs per-model 'weight'"):
        m.resolve({}, {}, 1, "here")
    assert len(METHODS) == 20


def test_every_method_has_a_documented_config():
    from importlib import resources

    import yaml

    folder = resources.files("evomerge.conf").joinpath("merge")
    seen = set()
    for f in folder.iterdir():
        if f.name.endswith(".yaml"):
            text = f.read_text()
            assert text.startswith("#"), f"{f.name}: needs a comment header"
            cfg = yaml.safe_load(text)
            m = METHODS[cfg["method"]]
            assert set(cfg.get("params") or {}) <= set(m.params), f.name
            seen.add(cfg["method"])
    assert seen == set(METHODS)


@pytest.mark.parametrize("layout", ["random", "sorted", "constant_blocks"])
def test_kth_selection_is_exact_on_large_tensors(layout):
    """The bracketed selection equals kthvalue, including layouts where the strided sample is unrepresentative."""
    from evomerge.merge.methods import _kth_smallest

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300_000, generator=g).abs()
    if layout == "sorted":
        x = x.sort().values
    elif layout == "constant_blocks":
        x = torch.cat([torch.zeros(150_000), x[:150_000]])
    for k in (1, 1000, 150_000, 150_001, 299_999, 300_000):
        assert _kth_smallest(x, k) == torch.kthvalue(x, k).values
