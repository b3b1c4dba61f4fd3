"""The differential-privacy accounting of the published domain prototype (pure maths, no torch).

Mechanism: the prototype is the mean of n prompt embeddings, each of L2 norm at most C (MiniLM
embeddings are L2-normalised by the encoder, so C = 1 holds by construction). Replacing one
training prompt moves that mean by at most Delta = 2C / n in L2 norm (the sensitivity), and the
node adds N(0, sigma^2 I) noise once. That is the Gaussian mechanism; it is (epsilon, delta)-DP
with respect to replacing one training pair's prompt exactly when (Balle & Wang 2018, "Improving
the Gaussian mechanism for differential privacy", Theorem 8):

    Phi(Delta / (2 sigma) - epsilon sigma / Delta) - e^epsilon Phi(-Delta / (2 sigma) - epsilon sigma / Delta) <= delta

`gaussian_delta` evaluates the left side; `sigma_for` and `epsilon_for` invert it by bisection
(it decreases in both sigma and epsilon). This analytic calibration holds for every epsilon,
unlike the classic sigma = Delta sqrt(2 ln(1.25/delta)) / epsilon, which needs epsilon < 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable

_BISECTION_STEPS = 200


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def mean_sensitivity(n: int, clip_norm: float = 1.0) -> float:
    """L2 sensitivity of the mean of n vectors of norm <= clip_norm to replacing one of them."""
    if n < 1 or clip_norm <= 0:
        raise ValueError("n must be >= 1 and clip_norm > 0")
    return 2.0 * clip_norm / n


def gaussian_delta(sigma: float, sensitivity: float, epsilon: float) -> float:
    """The smallest delta for which N(0, sigma^2) noise on a query of this sensitivity is (epsilon, delta)-DP."""
    if sigma <= 0:
        return 1.0
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    tail = _phi(-a - b)
    second = 0.0 if tail == 0.0 else math.exp(min(epsilon + math.log(tail), 700.0))
    return max(0.0, _phi(a - b) - second)


def _smallest(too_small: Callable[[float], bool], hi: float, cap: float = math.inf) -> float:
    """The smallest x >= 0 with not too_small(x), for a monotone too_small: double hi until it is
    large enough (inf past cap), then bisect [0, hi]."""
    lo = 0.0
    while too_small(hi):
        hi *= 2.0
        if hi > cap:
            return math.inf
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if too_small(mid):
            lo = mid
        else:
            hi = mid
    return hi


def sigma_for(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest noise std making the Gaussian mechanism (epsilon, delta)-DP."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("epsilon must be > 0 and delta in (0, 1)")
    return _smallest(lambda sigma: gaussian_delta(sigma, sensitivity, epsilon) > delta, sensitivity)


def epsilon_for(sigma: float, delta: float, sensitivity: float) -> float:
    """The smallest epsilon for which N(0, sigma^2) noise is (epsilon, delta)-DP; inf when sigma is 0."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if sigma <= 0:
        return math.inf
    if gaussian_delta(sigma, sensitivity, 0.0) <= delta:
        return 0.0
    return _smallest(lambda eps: gaussian_delta(sigma, sensitivity, eps) > delta, 1.0, cap=1e6)


__all__ = ["epsilon_for", "gaussian_delta", "mean_sensitivity", "sigma_for"]
