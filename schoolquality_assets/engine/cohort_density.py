"""The log density of the cohort programs and its gradient, written by hand (numba), on Stan's
unconstrained space: M2 (stan/m2_cohort.stan) and M3 (stan/m3_profile.stan, M2 plus profiles).

The .stan files are the specification: this is the same function of the same parameter vector
(Stan's unconstrained order: Intercept, delta, log_sd_school, log_sd_cohort, mu_school_c, z_school,
mu_cohort_c, z_cohort and, for M3, log_sd_profile, r_profile_c, z_profile; each times its
multiplier), equal to httpstan's ``log_prob`` up to one constant and with the same gradient
(tested at random points, schoolquality_assets_tests/test_cohort_density.py). Reverse mode through
the model block by hand: one pass down the hierarchy for the linear predictor, one pass up for
the adjoints.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from schoolquality_assets.engine import c_density

NU, SCALE = 3.0, 2.5  # student_t(3, 0, 2.5) on Intercept and on every SD


class Blocks:
    """Where each parameter block sits in the unconstrained vector, from ``sizes()`` (name ->
    length, in Stan's order)."""

    def sizes(self) -> dict[str, int]:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return sum(self.sizes().values())

    def slices(self) -> dict[str, slice]:
        out, at = {}, 0
        for name, n in self.sizes().items():
            out[name] = slice(at, at + n)
            at += n
        return out

    def vector(self, init: dict) -> np.ndarray:
        """An initial-values dict's blocks laid out in order (absent blocks 0), before any transform."""
        u = np.zeros(self.size)
        for name, where in self.slices().items():
            if where.stop > where.start:
                u[where] = np.asarray(init.get(name, np.zeros(where.stop - where.start)), float).reshape(-1)
        return u


class Kernel:
    """A program's data as its kernel wants them (0-based indices, contiguous arrays)."""

    def __call__(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        grad = np.empty_like(u)
        return float(self.logp_into(u, grad)), grad

    def logp_into(self, u: np.ndarray, grad: np.ndarray) -> float:
        raise NotImplementedError

    def c_logp(self):
        """The same log density as a C function for nutpie (c_density): (the numba cfunc, its table).
        Keep the Kernel alive while the function is in use: the table points into its arrays."""
        raise NotImplementedError


@dataclass(frozen=True)
class Layout(Blocks):
    """Where each parameter block of M2 / M3 sits in the unconstrained vector."""

    K: int
    J_school_c: int
    J_school_nc: int
    J_cohort_c: int
    J_cohort_nc: int
    profile: bool = False
    J_profile_c: int = 0
    J_profile_nc: int = 0

    def sizes(self) -> dict[str, int]:
        sizes = {"Intercept": 1, "delta": self.K, "log_sd_school": 1, "log_sd_cohort": 1,
                 "mu_school_c": self.J_school_c, "z_school": self.J_school_nc,
                 "mu_cohort_c": self.J_cohort_c, "z_cohort": self.J_cohort_nc}
        if self.profile:
            sizes |= {"log_sd_profile": 1, "r_profile_c": self.J_profile_c, "z_profile": self.J_profile_nc}
        return sizes


SCALARS = ("Intercept", "log_sd_school", "log_sd_cohort", "log_sd_profile")


def layout(data: dict) -> Layout:
    profile = "J_profile" in data
    return Layout(K=int(data["K"]), J_school_c=int(data["J_school_c"]),
                  J_school_nc=int(data["J_school"]) - int(data["J_school_c"]),
                  J_cohort_c=int(data["J_cohort_c"]), J_cohort_nc=int(data["J_cohort"]) - int(data["J_cohort_c"]),
                  profile=profile, J_profile_c=int(data.get("J_profile_c", 0)),
                  J_profile_nc=int(data.get("J_profile", 0)) - int(data.get("J_profile_c", 0)))


def multipliers(data: dict) -> np.ndarray:
    """Each unconstrained coordinate's multiplier (the constrained value is u * multiplier)."""
    K, log_sd = int(data["K"]), np.asarray(data["log_sd_scale"], float)
    parts = [[data["fixed_scale"]], np.full(K, data["fixed_scale"]), log_sd[:2],
             data["school_c_scale"], data["school_nc_scale"], data["cohort_c_scale"], data["cohort_nc_scale"]]
    if layout(data).profile:
        parts += [log_sd[2:3], data["profile_c_scale"], data["profile_nc_scale"]]
    return np.concatenate([np.asarray(p, float).reshape(-1) for p in parts])


@dataclass(frozen=True)
class Density(Kernel):
    layout: Layout
    arrays: tuple

    def logp_into(self, u: np.ndarray, grad: np.ndarray) -> float:
        return _logp_grad(u, grad, *self.arrays)

    def c_logp(self):
        return _c_logp(), c_density.table(self.arrays)


def density(data: dict) -> Density:
    """The kernel's arrays from the Stan data of stan/m2_cohort.stan or stan/m3_profile.stan
    (specs.stan_data)."""
    index = lambda k: np.ascontiguousarray(np.asarray(data[k], dtype=np.int64).reshape(-1) - 1)  # noqa: E731
    real = lambda k: np.ascontiguousarray(np.asarray(data[k], dtype=np.float64))  # noqa: E731
    K, lay = int(data["K"]), layout(data)
    rows = lambda k: np.ascontiguousarray(np.asarray(data[k], float).reshape(-1, K))  # noqa: E731
    none = np.zeros(0, dtype=np.int64)
    profile = (index("subject_profile"), index("profile_c"), index("profile_nc")) if lay.profile else (none, none, none)
    arrays = (
        multipliers(data), real("y_success"), real("n_trials"), index("cohort"), index("within_row"), rows("Xw_rows"),
        index("cohort_school"), index("cohort_row"), rows("Xbar_rows"), index("school_row"), rows("Xss_rows"),
        np.ascontiguousarray(np.asarray(data["X_mean"], float).reshape(K)),
        index("school_c"), index("school_nc"), index("cohort_c"), index("cohort_nc"),
        lay.profile, *profile, float(data["prior_b_sd"]),
    )
    return Density(lay, arrays)


@intrinsic
def _real_of_bits(typingctx, bits):
    """An int64's bits as a float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


@intrinsic
def _bits_of_real(typingctx, x):
    """A float64's bits as an int64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))
    return types.int64(types.float64), codegen


_LN2_HI, _LN2_LO, _INV_LN2 = 6.93147180369123816490e-01, 1.90821492927058770002e-10, 1.44269504088896338700e+00
_ROUND, _TWO52 = 6755399441055744.0, 4503599627370496.0   # 1.5 * 2^52: (x + _ROUND) - _ROUND is x rounded
_A = tuple(1.0 / math.factorial(i) for i in range(13))    # exp's Taylor coefficients
# fdlibm's e_log.c: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01,
       1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01)


@numba.njit(inline="always", error_model="numpy")
def exp_nonpositive(x):
    """exp(x) for x <= 0 (x below -700 taken as -700: 1e-304, not 0), within 3 ulp: x = k ln 2 + r,
    |r| <= ln 2 / 2, exp(r) by its Taylor series to degree 12 (remainder < 2e-16), times 2^k built
    from bits. Plain arithmetic, unlike libm's exp, so that a loop of it vectorises: k is rounded
    and 2^k built without converting to an integer (which AVX2 cannot do four at a time), and the
    terms from r^3 on are summed in a tree (Estrin's scheme) rather than one long chain (Horner's),
    whose latency bounded the likelihood's loop; 1 + r + r^2/2 are added last, as Horner would."""
    x = max(x, -700.0)
    k = (x * _INV_LN2 + _ROUND) - _ROUND
    r = (x - k * _LN2_HI) - k * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    a = _A
    tail = (((a[3] + a[4] * r) + (a[5] + a[6] * r) * r2) + ((a[7] + a[8] * r) + (a[9] + a[10] * r) * r2) * r4
            + (a[11] + a[12] * r) * (r4 * r4))
    p = 1.0 + (r + r2 * (0.5 + r * tail))
    return p * _real_of_bits(_bits_of_real(k + (1023.0 + _TWO52)) << 52)   # 2^k: k + 1023 in the low bits


@numba.njit(inline="always", error_model="numpy")
def log_1_to_2(w):
    """log(w) for 1 <= w <= 2, fdlibm's method (error < 1 ulp), branch-free: w = 2^k m, k in {0, 1}."""
    k = 1.0 if w > 1.4142135623730951 else 0.0
    f = (w * 0.5 if k > 0.0 else w) - 1.0
    s = f / (2.0 + f)
    z = s * s
    z2 = z * z
    r = z2 * (_LG[1] + z2 * (_LG[3] + z2 * _LG[5])) + z * (_LG[0] + z2 * (_LG[2] + z2 * (_LG[4] + z2 * _LG[6])))
    half_f2 = 0.5 * f * f
    return k * _LN2_HI - ((half_f2 - (s * (half_f2 + r) + k * _LN2_LO)) - f)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def binomial_logit(y, n, eta, d):
    """sum_i y_i eta_i - n_i log(1 + exp(eta_i)) (the binomial log likelihood on the logit scale,
    without its constant) and, into d, each row's derivative y_i - n_i inv_logit(eta_i); eta is
    overwritten. With e = exp(-|eta|) <= 1, log(1 + exp(eta)) = max(eta, 0) + log(1 + e) (log of
    1 + e rather than log1p(e): an absolute error of at most ~2e-16 per trial). The terms are summed
    in 8 running sums, a fixed order, so that the loop vectorises and the sum is reproducible."""
    for i in range(eta.shape[0]):
        v = eta[i]
        e = exp_nonpositive(-abs(v))
        inv = 1.0 / (1.0 + e)
        eta[i] = y[i] * v - n[i] * (max(v, 0.0) + log_1_to_2(1.0 + e))
        d[i] = y[i] - n[i] * (inv if v > 0.0 else e * inv)
    sums = np.zeros(8)
    whole = eta.shape[0] - eta.shape[0] % 8
    for i in range(0, whole, 8):
        for j in range(8):
            sums[j] += eta[i + j]
    lp = 0.0
    for i in range(whole, eta.shape[0]):
        lp += eta[i]
    for j in range(8):
        lp += sums[j]
    return lp


@numba.njit(cache=True, error_model="numpy")
def t_lpdf(x):
    """student_t(3, 0, 2.5) without its constant, and d/dx."""
    q = (x / SCALE) ** 2 / NU
    return -(NU + 1.0) / 2.0 * np.log1p(q), -(NU + 1.0) * x / (SCALE * SCALE * NU) / (1.0 + q)


@numba.njit(cache=True, error_model="numpy")
def _group(x, g, g_group, p_c, centred, p_n, noncentred, mean, log_sd):
    """One level's prior (centred: x ~ normal(mean, sd); non-centred: z ~ std_normal, group =
    mean + sd * z), given the adjoint of each group's value: writes the gradient of the level's
    parameters into g and returns (log density, adjoint of log sd, adjoint of each group mean)."""
    sd = np.exp(log_sd)
    inv_var = 1.0 / (sd * sd)
    g_mean = np.zeros(mean.shape[0])
    lp, g_log_sd = -centred.shape[0] * log_sd, -float(centred.shape[0])
    for i in range(centred.shape[0]):
        k = centred[i]
        r = x[p_c + i] - mean[k]
        lp -= 0.5 * r * r * inv_var
        g[p_c + i] = g_group[k] - r * inv_var
        g_mean[k] += r * inv_var
        g_log_sd += r * r * inv_var
    for i in range(noncentred.shape[0]):
        k = noncentred[i]
        z = x[p_n + i]
        lp -= 0.5 * z * z
        g[p_n + i] = g_group[k] * sd - z
        g_mean[k] += g_group[k]
        g_log_sd += g_group[k] * sd * z
    return lp, g_log_sd, g_mean


@numba.njit(cache=True, error_model="numpy")
def _assemble(x, mean, p_c, centred, p_n, noncentred, sd):
    out = np.empty(mean.shape[0])
    for i in range(centred.shape[0]):
        out[centred[i]] = x[p_c + i]
    for i in range(noncentred.shape[0]):
        k = noncentred[i]
        out[k] = mean[k] + sd * x[p_n + i]
    return out


def fixed_order_dot(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """rows @ v for a (draws, K) array, column by column (elementwise products and sums give the same
    bits on every CPU, unlike BLAS)."""
    out = np.zeros(rows.shape[0])
    for k in range(rows.shape[1]):
        out += rows[:, k] * v[k]
    return out


@numba.njit(cache=True, nogil=True)
def matvec(A, v):
    """A @ v as explicit loops in a fixed order: BLAS picks CPU-specific kernels at run time, whose
    sums can differ in the last bit between machines, and so would the draws."""
    out = np.zeros(A.shape[0])
    for i in range(A.shape[0]):
        s = 0.0
        for k in range(A.shape[1]):
            s += A[i, k] * v[k]
        out[i] = s
    return out


@numba.njit(cache=True, nogil=True)
def matvec_t(A, v):
    """A.T @ v as explicit loops in a fixed order (see :func:`matvec`)."""
    out = np.zeros(A.shape[1])
    for i in range(A.shape[0]):
        for k in range(A.shape[1]):
            out[k] += A[i, k] * v[i]
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _logp_grad(u, grad, mult, y, n, cohort, within_row, Xw, cohort_school, cohort_row, Xbar, school_row, Xss,
               X_mean, school_c, school_nc, cohort_c, cohort_nc, profile, subject_profile, profile_c, profile_nc,
               prior_b_sd):
    K = Xw.shape[1]
    J_school, J_cohort = school_c.shape[0] + school_nc.shape[0], cohort_c.shape[0] + cohort_nc.shape[0]
    J_profile = profile_c.shape[0] + profile_nc.shape[0]
    p_sc = 3 + K
    p_sn = p_sc + school_c.shape[0]
    p_cc = p_sn + school_nc.shape[0]
    p_cn = p_cc + cohort_c.shape[0]
    p_lsd_p = p_cn + cohort_nc.shape[0]
    p_pc = p_lsd_p + 1
    p_pn = p_pc + profile_c.shape[0]
    x = u * mult
    intercept, delta = x[0], x[1:1 + K]
    lsd_s, lsd_c = x[1 + K], x[2 + K]

    # down: b, each level's fixed part and mean, the linear predictor
    b = delta + delta.sum()
    xss_b, xbar_b, xw_b = matvec(Xss, b), matvec(Xbar, b), matvec(Xw, b)
    school_fixed = np.empty(J_school)
    for j in range(J_school):
        school_fixed[j] = xss_b[school_row[j]]
    base = intercept - (X_mean * b).sum()
    school_mean = base + school_fixed
    mu_school = _assemble(x, school_mean, p_sc, school_c, p_sn, school_nc, np.exp(lsd_s))
    cohort_mean = np.empty(J_cohort)
    for k in range(J_cohort):
        s = cohort_school[k]
        cohort_mean[k] = mu_school[s] + xbar_b[cohort_row[k]] - school_fixed[s]
    mu_cohort = _assemble(x, cohort_mean, p_cc, cohort_c, p_cn, cohort_nc, np.exp(lsd_c))
    lsd_p = x[p_lsd_p] if profile else 0.0
    r_profile = _assemble(x, np.zeros(J_profile), p_pc, profile_c, p_pn, profile_nc, np.exp(lsd_p))

    # likelihood, in three passes so that the middle one (exp and log, most of the time) vectorises
    eta = np.empty(y.shape[0])
    for i in range(y.shape[0]):
        eta[i] = mu_cohort[cohort[i]] + xw_b[within_row[i]]
    if profile:
        for i in range(y.shape[0]):
            eta[i] += r_profile[subject_profile[i]]
    d = np.empty(y.shape[0])
    lp = binomial_logit(y, n, eta, d)
    g = np.zeros(u.shape[0])
    g_mu_cohort = np.zeros(J_cohort)
    g_xw_b = np.zeros(Xw.shape[0])
    g_profile = np.zeros(J_profile)
    for i in range(y.shape[0]):
        g_mu_cohort[cohort[i]] += d[i]
        g_xw_b[within_row[i]] += d[i]
    if profile:
        for i in range(y.shape[0]):
            g_profile[subject_profile[i]] += d[i]

    # up: cohorts, then the cohort means' parts (school mean, Xbar b, minus the school's fixed part)
    t, g_lsd_c, g_cohort_mean = _group(x, g, g_mu_cohort, p_cc, cohort_c, p_cn, cohort_nc, cohort_mean, lsd_c)
    lp += t
    g_mu_school = np.zeros(J_school)
    g_school_fixed = np.zeros(J_school)
    g_xbar_b = np.zeros(Xbar.shape[0])
    for k in range(J_cohort):
        s = cohort_school[k]
        g_mu_school[s] += g_cohort_mean[k]
        g_school_fixed[s] -= g_cohort_mean[k]
        g_xbar_b[cohort_row[k]] += g_cohort_mean[k]
    t, g_lsd_s, g_school_mean = _group(x, g, g_mu_school, p_sc, school_c, p_sn, school_nc, school_mean, lsd_s)
    lp += t
    g_school_fixed += g_school_mean
    g_base = g_school_mean.sum()
    g_xss_b = np.zeros(Xss.shape[0])
    for j in range(J_school):
        g_xss_b[school_row[j]] += g_school_fixed[j]
    g_b = matvec_t(Xss, g_xss_b) + matvec_t(Xbar, g_xbar_b) + matvec_t(Xw, g_xw_b) - g_base * X_mean

    # priors on Intercept, the SDs (on sd, with the log Jacobian), b when given one
    t, dt = t_lpdf(intercept)
    lp += t
    g[0] = g_base + dt
    t, dt = t_lpdf(np.exp(lsd_s))
    lp += t + lsd_s
    g[1 + K] = g_lsd_s + dt * np.exp(lsd_s) + 1.0
    t, dt = t_lpdf(np.exp(lsd_c))
    lp += t + lsd_c
    g[2 + K] = g_lsd_c + dt * np.exp(lsd_c) + 1.0
    if profile:
        t, g_lsd_p, _ = _group(x, g, g_profile, p_pc, profile_c, p_pn, profile_nc, np.zeros(J_profile), lsd_p)
        lp += t
        t, dt = t_lpdf(np.exp(lsd_p))
        lp += t + lsd_p
        g[p_lsd_p] = g_lsd_p + dt * np.exp(lsd_p) + 1.0
    if prior_b_sd > 0.0:
        for k in range(K):
            lp -= 0.5 * (b[k] / prior_b_sd) ** 2
            g_b[k] -= b[k] / (prior_b_sd * prior_b_sd)
    total = g_b.sum()
    for k in range(K):
        g[1 + k] = g_b[k] + total   # b = delta + sum(delta)
    for i in range(u.shape[0]):
        grad[i] = g[i] * mult[i]
    return lp


@functools.cache
def _c_logp():
    """_logp_grad as a C function (compiled on first use; numba caches it on disk)."""
    @numba.cfunc(c_density.LOGP, cache=True, error_model="numpy")
    def logp(dim, x_, grad_, logp_, table_):
        u, grad, t = c_density.arguments(x_, grad_, table_, 21, dim)
        r, i, m = c_density.reals, c_density.ints, c_density.matrix
        logp_[0] = _logp_grad(u, grad, r(t, 0), r(t, 1), r(t, 2), i(t, 3), i(t, 4), m(t, 5), i(t, 6), i(t, 7),
                              m(t, 8), i(t, 9), m(t, 10), r(t, 11), i(t, 12), i(t, 13), i(t, 14), i(t, 15),
                              c_density.scalar(t, 16) != 0.0, i(t, 17), i(t, 18), i(t, 19), c_density.scalar(t, 20))
        return 0   # a non-finite logp or gradient is nutpie's to reject (a divergence), as from Python
    return logp


def unconstrain(init: dict, data: dict) -> np.ndarray:
    """An initial-values dict (models.initial_values) as the unconstrained vector."""
    return layout(data).vector(init) / multipliers(data)


def output_names(data: dict) -> list[str]:
    """The program's output columns as Stan names them: parameters, transformed parameters,
    generated quantities (without eta: the engine samples with emit_eta = 0)."""
    lay = layout(data)
    names = []
    for name, n in lay.sizes().items():
        names += [name] if name in SCALARS else [f"{name}.{i + 1}" for i in range(n)]
    sds = ["sd_school", "sd_cohort"] + ["sd_profile"] * lay.profile
    return names + [f"b.{k + 1}" for k in range(lay.K)] + sds + ["b_Intercept"]


def output_rows(u: np.ndarray, data: dict) -> np.ndarray:
    """Unconstrained draws (draws, size) as the program's output rows (draws, len(output_names))."""
    lay = layout(data)
    x = np.atleast_2d(u) * multipliers(data)
    s = lay.slices()
    delta = x[:, s["delta"]]
    b = delta + delta.sum(axis=1, keepdims=True)
    log_sds = [s[k].start for k in ("log_sd_school", "log_sd_cohort", "log_sd_profile") if k in s]
    b_intercept = x[:, 0] - fixed_order_dot(b, np.asarray(data["X_mean"], float).reshape(lay.K))
    return np.concatenate([x, b, np.exp(x[:, log_sds]), b_intercept[:, None]], axis=1)
