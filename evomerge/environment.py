"""What a number was made with: package versions, Python, threads, device and processor.

Results drift with the stack (a dependency resolved on another day, another CPU's vector units), so every zoo
(`zoo.json`), run (`final.json`, the report) and committed table records this fingerprint, and `differences` says
what changed when a regenerated number does not match.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

# The packages whose versions can move a committed number (numerics, training, evaluation, search).
PACKAGES = ("evomerge", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "pymoo", "cma",
            "lm_eval", "datasets", "optuna", "ray")
# Processor features that change which kernels torch picks (and so the last bits of float results).
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon",
             "asimd", "sve")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def git_commit(root: Path | None = None) -> str | None:
    """Short commit of the checkout evomerge runs from (read from .git, no git process); None outside a checkout.
    Uncommitted changes are not detected: tables made for the README are made from a clean checkout."""
    git = (root or Path(__file__).resolve().parent.parent) / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:7]
        ref = head.split(":", 1)[1].strip()
        common = Path((git / "commondir").read_text().strip()) if (git / "commondir").exists() else None
        for d in (git, (git / common) if common else None):
            if d is not None and (d / ref).exists():
                return (d / ref).read_text().strip()[:7]
            packed = d / "packed-refs" if d is not None else None
            if packed is not None and packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0][:7]
    except (OSError, IndexError):
        return None
    return None


def fingerprint(device: str = "cpu") -> dict:
    """The environment as one JSON-able dict (cheap: no model, no CUDA initialisation on a CPU run)."""
    import torch

    model, flags = _cpu()
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "packages": {p: v for p in PACKAGES if (v := _version(p)) is not None},
           "torch_threads": torch.get_num_threads(), "device": str(device),
           "cpu": model, "cpu_flags": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    commit = git_commit()
    if commit:
        env["commit"] = commit
    return env


def describe(env: dict) -> str:
    """One line for a table header: what a reader needs to judge whether their stack matches."""
    pk = env.get("packages", {})
    names = ("torch", "transformers", "numpy", "pymoo", "cma", "lm_eval", "datasets")
    stack = ", ".join(f"{p} {pk[p]}" for p in names if p in pk)
    where = env.get("gpu") or f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')})"
    commit = f"evomerge {env['commit']}, " if env.get("commit") else ""
    return (f"{commit}Python {env.get('python', '?')}, {stack}; {env.get('device', 'cpu')} on {where}, "
            f"torch threads {env.get('torch_threads', '?')}")


# What decides the numbers: torch picks its CPU kernels by `cpu_capability` (AVX512, AVX2, ...), not by the CPU's
# model; an AVX2 machine's tables were reproduced exactly here with ATEN_CPU_CAPABILITY=avx2 on an AVX512 CPU.
NUMERICS = ("python", "device", "gpu", "cpu_capability", "torch_threads")


def differences(made: dict, here: dict, keys=(*NUMERICS, "cpu", "cpu_flags")) -> list[str]:
    """What differs between the environment a number was made in and this one (commit and platform aside);
    `keys=NUMERICS` for only what can move a number (with the package versions)."""
    out = []
    for p in sorted(set(made.get("packages", {})) | set(here.get("packages", {}))):
        a, b = made.get("packages", {}).get(p), here.get("packages", {}).get(p)
        if a != b and p != "evomerge":
            out.append(f"{p} {a or 'absent'} -> {b or 'absent'}")
    for key in keys:
        if made.get(key) != here.get(key):
            out.append(f"{key} {made.get(key)} -> {here.get(key)}")
    return out


if __name__ == "__main__":  # python -m evomerge.environment: print this machine's fingerprint
    import json

    json.dump(fingerprint(sys.argv[1] if len(sys.argv) > 1 else "cpu"), sys.stdout, indent=1)
    print()
