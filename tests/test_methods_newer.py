"""mergekit 0.1.5's newer methods (sce, karcher, nearswap, arcee_fusion, ram, ramplus_tl) against slow references
written here from mergekit 0.1.5's definitions: Python floats entry by entry, sorts instead of selection, no code
shared with evomerge/merge/methods.py. Edge cases: ties on a bf16-like grid, a single expert, zero task vectors.
"""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.merge.registry import METHODS, get_method

get_method("linear")  # registers the built-ins


def call(name, base, tensors, **params):
    m = METHODS[name]
    return m.fn(base, tensors, generator=None, **m.resolve({}, params, len(tensors), "test"))


def close(out, ref, atol=1e-6):
    ref = torch.tensor(ref, dtype=torch.float64).reshape(out.shape)
    assert torch.allclose(out.double(), ref, atol=atol, rtol=1e-6), (out.double() - ref).abs().max()


def flat(t):
    return [float(x) for x in t.double().flatten()]


@pytest.fixture
def trio():
    """A float64 base and three fine-tunes that leave about a third of the entries untouched."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(7, 11, generator=g, dtype=torch.float64)
    experts = [base + 0.1 * torch.randn(7, 11, generator=g, dtype=torch.float64)
               * (torch.rand(7, 11, generator=g, dtype=torch.float64) < 0.66) for _ in range(3)]
    return base, experts


@pytest.fixture
def tied():
    """bf16 weights whose deltas sit on a coarse grid: many equal magnitudes and variances."""
    g = torch.Generator().manual_seed(5)
    base = (torch.round(16 * torch.randn(9, 12, generator=g)) / 16).to(torch.bfloat16)
    experts = [(base.float() + torch.round(2 * torch.randn(9, 12, generator=g)) / 32).to(torch.bfloat16)
               for _ in range(2)]
    return base, experts


# ---- references -------------------------------------------------------------------------------------------------


def ref_sce(base, experts, topk):
    b = flat(base)
    tv = [[x - y for x, y in zip(flat(e), b, strict=True)] for e in experts]
    n, size = len(tv), len(b)
    if topk < 1:
        var = []
        for j in range(size):
            col = [tv[i][j] for i in range(n)]
            mean = sum(col) / n
            var.append(sum((c - mean) ** 2 for c in col) / n)
        k = int(sum(1 for v in var if v != 0) * topk) if topk > 0 else 0
        order = sorted(range(size), key=lambda j: -var[j])  # stable: equal variances keep the lower index first
        keep = set(order[:k])
        tv = [[row[j] if j in keep else 0.0 for j in range(size)] for row in tv]
    w = [sum(x * x for x in row) / size for row in tv]
    total = sum(w)
    w = [x / total for x in w] if abs(total) >= 1e-6 else [1.0 / n] * n
    out = []
    for j in range(size):
        s = sum(tv[i][j] for i in range(n))
        sign = 1.0 if s >= 0 else -1.0
        num = den = 0.0
        for i in range(n):
            d = tv[i][j]
            if d != 0 and math.copysign(1.0, d) == sign:
                num += w[i] * d
                den += w[i]
        out.append(b[j] + num / max(den, 1e-6))
    return out


def ref_nearswap(base, other, t):
    out = []
    for a, b in zip(flat(base), flat(other), strict=True):
        w = min(1.0, max(0.0, t / max(abs(a - b), 1e-6)))
        out.append(w * b + (1 - w) * a)
    return out


def ref_ram(base, experts, epsilon, plus=None):
    b = flat(base)
    tv = [[x - y for x, y in zip(flat(e), b, strict=True)] for e in experts]
    n, size = len(tv), len(b)
    live = [[abs(d) > epsilon for d in row] for row in tv]
    count = [sum(live[i][j] for i in range(n)) for j in range(size)]
    amp = [1.0] * n
    if plus is not None:
        r, alpha = plus
        for i in range(n):
            shared = sum(1 for j in range(size) if live[i][j] and count[j] > 1)
            unique = sum(1 for j in range(size) if live[i][j] and count[j] == 1)
            amp[i] = 1 + r * min(max(shared / max(unique, epsilon), 0.0), alpha)
    out = []
    for j in range(size):
        s = 0.0
        for i in range(n):
            if live[i][j]:
                s += tv[i][j] * amp[i] if count[j] == 1 else tv[i][j] / count[j]
        out.append(b[j] + s)
    return out


def ref_karcher(inputs, max_iter=10, tol=1e-5):
    vs = [flat(x) for x in inputs]
    if len(vs) == 1:
        return vs[0]

    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    def dot(a, c):
        return sum(x * y for x, y in zip(a, c, strict=True))

    norms = [norm(v) for v in vs]
    units = [[x / nv for x in v] for v, nv in zip(vs, norms, strict=True) if nv > tol]
    if not units:
        return [0.0] * len(vs[0])
    u = [sum(col) / len(units) for col in zip(*units, strict=True)]
    nu = norm(u)
    u = list(units[0]) if nu < tol else [x / nu for x in u]
    for _ in range(max_iter):
        tangent = [0.0] * len(u)
        for x in units:
            c = min(1.0, max(-1.0, dot(u, x)))
            theta = math.acos(c)
            if theta < tol:
                continue
            f = (theta / math.sin(theta)) / len(units)
            tangent = [tg + f * (xi - c * ui) for tg, xi, ui in zip(tangent, x, u, strict=True)]
        step = norm(tangent)
        if step < tol:
            break
        u = [math.cos(step) * ui + math.sin(step) * tg / step for ui, tg in zip(u, tangent, strict=True)]
        nu = norm(u)
        if nu > tol:
            u = [x / nu for x in u]
    scale = sum(norms) / len(vs)
    return [scale * x for x in u]


def ref_arcee(base, other):
    rows_a, rows_b = base.double().tolist(), other.double().tolist()
    imp = []
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ea, eb = [math.exp(x - max(ra)) for x in ra], [math.exp(x - max(rb)) for x in rb]
        p = [x / sum(eb) + 1e-8 for x in eb]
        q = [x / sum(ea) + 1e-8 for x in ea]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        imp.append([abs(y - x) * kl for x, y in zip(ra, rb, strict=True)])
    values = sorted(v for row in imp for v in row)
    n = len(values)
    q1, med, q3 = (values[int(f * (n - 1))] for f in (0.25, 0.5, 0.75))
    cut = med + 1.5 * (q3 - q1)
    return [x + (y - x) * (i >= cut) for ra, rb, ri in zip(rows_a, rows_b, imp, strict=True)
            for x, y, i in zip(ra, rb, ri, strict=True)]


# ---- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topk", [1.0, 0.6, 0.25, 0.0])
def test_sce(trio, topk):
    base, ex = trio
    close(call("sce", base, ex, select_topk=topk), ref_sce(base, ex, topk))


@pytest.mark.parametrize("topk", [0.3, 0.5, 0.9])
def test_sce_keeps_exactly_k_on_tied_bf16_variances(tied, topk):
    """Two bf16 experts on a grid: many entries share a variance; exactly int(topk * nonzero) survive, ties by
    position. The reference runs on the same bf16 inputs, widened exactly."""
    base, ex = tied
    out = call("sce", base, ex, select_topk=topk)
    assert out.dtype == torch.bfloat16
    ref = torch.tensor(ref_sce(base, ex, topk), dtype=torch.float64).to(torch.bfloat16).reshape(out.shape)
    assert torch.equal(out, ref)


def test_sce_single_expert_and_zero_task_vectors(trio):
    base, ex = trio
    close(call("sce", base, ex[:1]), flat(ex[0]))  # one expert, no selection: that expert
    assert torch.equal(call("sce", base, ex[:1], select_topk=0.5), base)  # one expert never varies: nothing kept
    assert torch.equal(call("sce", base, [base.clone(), base.clone()]), base)


@pytest.mark.parametrize("t", [0.0, 0.02, 0.08, 1.0])
def test_nearswap(trio, t):
    base, ex = trio
    close(call("nearswap", base, ex[:1], t=t), ref_nearswap(base, ex[0], t))
    with pytest.raises(ValueError, match="takes 1..1"):
        METHODS["nearswap"].resolve({}, {"t": t}, 2, "test")
    with pytest.raises(ValueError, match="needs global 't'"):
        METHODS["nearswap"].resolve({}, {}, 1, "test")


@pytest.mark.parametrize("epsilon", [1e-5, 0.05])
def test_ram(trio, epsilon):
    base, ex = trio
    close(call("ram", base, ex, epsilon=epsilon), ref_ram(base, ex, epsilon))


@pytest.mark.parametrize("r,alpha", [(0.1, 0.2), (0.5, 1.0), (2.0, 0.05)])
def test_ramplus_tl(trio, r, alpha):
    base, ex = trio
    close(call("ramplus_tl", base, ex, r=r, alpha=alpha), ref_ram(base, ex, 1e-5, plus=(r, alpha)))


def test_ram_single_expert_and_zero_task_vectors(trio):
    base, ex = trio
    close(call("ram", base, ex[:1]), flat(ex[0]))
    close(call("ramplus_tl", base, ex[:1]), ref_ram(base, ex[:1], 1e-5, plus=(0.1, 0.2)))
    for name in ("ram", "ramplus_tl"):
        assert torch.equal(call(name, base, [base.clone(), base.clone()]), base)


def test_ram_on_tied_bf16(tied):
    base, ex = tied
    for name, plus in (("ram", None), ("ramplus_tl", (0.1, 0.2))):
        out = call(name, base, ex)
        ref = torch.tensor(ref_ram(base, ex, 1e-5, plus), dtype=torch.float64).to(torch.bfloat16)
        assert torch.equal(out, ref.reshape(out.shape)), name


@pytest.mark.parametrize("with_base", [False, True])
def test_karcher(trio, with_base):
    base, ex = trio
    out = call("karcher", base if with_base else None, ex)
    close(out, ref_karcher(([base] if with_base else []) + ex), atol=1e-9)
    close(call("karcher", None, ex, max_iter=1), ref_karcher(ex, max_iter=1), atol=1e-9)


def test_karcher_edge_cases(trio):
    base, ex = trio
    assert torch.equal(call("karcher", None, ex[:1]), ex[0])  # one input: itself
    zero = torch.zeros_like(base)
    assert torch.equal(call("karcher", None, [zero, zero]), zero)
    # a zero input is left out of the direction but still counts in the mean norm (mergekit's rule)
    close(call("karcher", None, [ex[0], zero]), [0.5 * x for x in flat(ex[0])], atol=1e-12)


def test_arcee_fusion(trio):
    base, ex = trio
    out = call("arcee_fusion", base, ex[:1])
    ref = ref_arcee(base, ex[0])
    close(out, ref, atol=1e-12)
    kept = int((out != base).sum())
    assert 0 < kept < base.numel()  # an outlier cut: some but not all changes survive


def test_arcee_fusion_zero_task_vector_and_one_dim(trio):
    base, ex = trio
    assert torch.equal(call("arcee_fusion", base, [base.clone()]), base)
    v0, v1 = base[0].clone(), ex[0][0].clone()  # a 1-D tensor (a norm's weight): one softmax over the vector
    close(call("arcee_fusion", v0, [v1]), ref_arcee(v0.reshape(1, -1), v1.reshape(1, -1)), atol=1e-12)


@pytest.mark.parametrize("name", ["sce", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl"])
def test_dtype_and_shape_preserved(tied, name):
    base, ex = tied
    n = 1 if name in ("nearswap", "arcee_fusion") else 2
    out = call(name, base, ex[:n], **({"t": 0.01} if name == "nearswap" else {}))
    assert out.dtype == torch.bfloat16 and out.shape == base.shape and torch.isfinite(out.float()).all()
