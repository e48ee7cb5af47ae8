"""Per-parameter statistics of a freshly built model, and their comparison: the ``init`` parity check.

Imported by both halves of the parity check (the reference's environment and egoexor's) and by
``tests/test_reference_golden.py``; it needs only torch. Two random draws of the same initialisation
differ value by value, so what is compared is each tensor's shape, mean, standard deviation and
excess kurtosis (-1.2 for a uniform draw, 0 for a normal one), with the largest absolute value for
the report. The tolerances follow the sampling error of the statistics, so that PyTorch's default
``nn.Linear`` init (uniform, with a non-zero bias) fails where the reference draws N(0, 0.02) with a
zero bias, and a Kaiming normal draw passes against another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

#: Relative difference of the standard deviations allowed on top of 5 sampling standard errors.
STD_TOLERANCE = 0.05
#: Difference of the excess kurtosis allowed on top of 5 sampling standard errors (sqrt(24 / n)): separates a
#: uniform (-1.2) from a normal (0) draw of 1500 values or more.
KURTOSIS_TOLERANCE = 0.3
#: A tensor whose standard deviation is below this (relative to its largest value, or absolutely) is constant.
CONSTANT = 1e-7


def statistics(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, dict]:
    """name -> {shape, numel, mean, std, max_abs, kurtosis} (float64 statistics of each tensor; the excess
    kurtosis is 0 for a constant)."""
    out = {}
    for name, tensor in named_tensors:
        values = tensor.detach().double().flatten()
        mean = float(values.mean()) if values.numel() else 0.0
        std = float(values.std(unbiased=False)) if values.numel() else 0.0
        max_abs = float(values.abs().max()) if values.numel() else 0.0
        constant = std <= CONSTANT * max(1.0, max_abs)
        out[name] = {
            "shape": list(tensor.shape),
            "numel": values.numel(),
            "mean": mean,
            "std": 0.0 if constant else std,
            "max_abs": max_abs,
            "kurtosis": 0.0 if constant else float((((values - mean) / std) ** 4).mean()) - 3,
        }
    return out


def difference(ours: dict, reference: dict) -> str | None:
    """Why ``ours`` is not a draw of the same initialisation as ``reference`` (their :func:`statistics`
    entries), or None."""
    if ours["shape"] != reference["shape"]:
        return f"shape {ours['shape']} vs the reference's {reference['shape']}"
    n, r_std, o_std = reference["numel"], reference["std"], ours["std"]
    if reference["max_abs"] == 0:
        return None if ours["max_abs"] == 0 else f"not zero (max |x| {ours['max_abs']:.3g}) where the reference's is"
    if r_std == 0:  # a constant (norm weights and biases)
        if o_std == 0 and math.isclose(ours["mean"], reference["mean"], rel_tol=1e-6, abs_tol=1e-9):
            return None
        return f"mean {ours['mean']:.4g} std {o_std:.3g} where the reference's is the constant {reference['mean']:.4g}"
    std_tolerance = STD_TOLERANCE + 5 / math.sqrt(2 * n)
    if abs(o_std / r_std - 1) > std_tolerance:
        return f"std {o_std:.4g} vs the reference's {r_std:.4g} (tolerance {std_tolerance:.0%})"
    mean_tolerance = 5 * r_std / math.sqrt(n) + 1e-3 * r_std
    if abs(ours["mean"] - reference["mean"]) > mean_tolerance:
        return f"mean {ours['mean']:.3g} vs the reference's {reference['mean']:.3g} (tolerance {mean_tolerance:.2g})"
    kurtosis_tolerance = KURTOSIS_TOLERANCE + 5 * math.sqrt(24 / n)
    if abs(ours["kurtosis"] - reference["kurtosis"]) > kurtosis_tolerance:
        return (
            f"excess kurtosis {ours['kurtosis']:.2f} vs the reference's {reference['kurtosis']:.2f} "
            f"(tolerance {kurtosis_tolerance:.2f}: another distribution)"
        )
    return None


def differences(ours: dict[str, dict], reference: dict[str, dict]) -> tuple[int, list[str], float]:
    """(parameters compared, failures, worst relative std difference) over the reference's parameters."""
    failures, worst = [], 0.0
    for name, theirs in reference.items():
        if name not in ours:
            failures.append(f"{name}: not in egoexor's model")
            continue
        problem = difference(ours[name], theirs)
        if problem:
            failures.append(f"{name}: {problem}")
        if theirs["std"] > 0 and ours[name]["std"] > 0:
            worst = max(worst, abs(ours[name]["std"] / theirs["std"] - 1))
    failures += [f"{name}: egoexor has it, the reference does not" for name in sorted(set(ours) - set(reference))]
    return len(reference), failures, worst
