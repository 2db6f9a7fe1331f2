"""The log density of the school-only programs and its gradient, written by hand (numba), on Stan's
unconstrained space: M0 (stan/m0_normal.stan) and M1 (stan/m1_school.stan), on the data the
engine gives them (models.stan_data: one row per school, their sufficient statistics).

The .stan files are the specification: the same function of the same parameter vector (M1:
Intercept, b, log sd_school, mu_school; M0: Intercept, log sd_school, log sigma, mu_school), equal
to httpstan's ``log_prob`` up to one constant and with the same gradient (tested at random points,
schoolquality_assets_tests/test_cohort_density.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from schoolquality_assets.engine import c_density
from schoolquality_assets.engine.cohort_density import (Blocks, Kernel, binomial_logit, fixed_order_dot, matvec,
                                                         matvec_t, t_lpdf)


def normal_model(data: dict) -> bool:
    return "proportion" in data


@dataclass(frozen=True)
class Layout(Blocks):
    K: int
    J_school: int
    normal: bool

    def sizes(self) -> dict[str, int]:
        if self.normal:
            return {"Intercept": 1, "sd_school": 1, "sigma": 1, "mu_school": self.J_school}
        return {"Intercept": 1, "b": self.K, "sd_school": 1, "mu_school": self.J_school}


def layout(data: dict) -> Layout:
    return Layout(K=0 if normal_model(data) else int(data["K"]), J_school=int(data["J_school"]), normal=normal_model(data))


def _x(data: dict) -> np.ndarray:
    return np.asarray(data["X"], float).reshape(int(data["N"]), int(data["K"]))


@dataclass(frozen=True)
class Density(Kernel):
    layout: Layout
    arrays: tuple

    def logp_into(self, u: np.ndarray, grad: np.ndarray) -> float:
        kernel = _normal_logp_grad if self.layout.normal else _binomial_logp_grad
        return kernel(u, grad, *self.arrays)

    def c_logp(self):
        return _c_logp(self.layout.normal), c_density.table(self.arrays)


def density(data: dict) -> Density:
    lay = layout(data)
    school = np.ascontiguousarray(np.asarray(data["school"], dtype=np.int64).reshape(-1) - 1)
    real = lambda k: np.ascontiguousarray(np.asarray(data[k], float))  # noqa: E731  (the C function's table needs contiguous arrays)
    if lay.normal:
        arrays = (real("proportion"), real("n_obs"), real("ss_within"), school, float(data["prior_intercept_location"]))
    else:
        X = _x(data)
        arrays = (real("y_success"), real("n_trials"), school,
                  np.ascontiguousarray(X - X.mean(axis=0)), float(data["prior_b_sd"]))  # Xc, as the transformed data
    return Density(lay, arrays)


@numba.njit(cache=True, error_model="numpy")
def _school_prior(u, g, p_mu, intercept, lsd):
    """mu_school ~ normal(intercept, sd): log density; writes d/dmu into g; returns (lp, d/dintercept, d/dlog sd)."""
    sd = np.exp(lsd)
    inv_var = 1.0 / (sd * sd)
    J = u.shape[0] - p_mu
    lp, g_intercept, g_lsd = -J * lsd, 0.0, -float(J)
    for j in range(J):
        r = u[p_mu + j] - intercept
        lp -= 0.5 * r * r * inv_var
        g[p_mu + j] = -r * inv_var
        g_intercept += r * inv_var
        g_lsd += r * r * inv_var
    return lp, g_intercept, g_lsd


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _binomial_logp_grad(u, grad, y, n, school, Xc, prior_b_sd):
    K = Xc.shape[1]
    p_mu = 2 + K
    intercept, b, lsd = u[0], u[1:1 + K], u[1 + K]
    g = np.zeros(u.shape[0])
    lp, g_intercept, g_lsd = _school_prior(u, g, p_mu, intercept, lsd)
    xb = matvec(Xc, b)
    eta = np.empty(y.shape[0])
    for i in range(y.shape[0]):
        eta[i] = u[p_mu + school[i]] + xb[i]
    g_eta = np.empty(y.shape[0])
    lp += binomial_logit(y, n, eta, g_eta)
    for i in range(y.shape[0]):
        g[p_mu + school[i]] += g_eta[i]
    g_b = matvec_t(Xc, g_eta)
    t, dt = t_lpdf(intercept)
    lp += t
    g[0] = g_intercept + dt
    t, dt = t_lpdf(np.exp(lsd))
    lp += t + lsd
    g[1 + K] = g_lsd + dt * np.exp(lsd) + 1.0
    for k in range(K):
        if prior_b_sd > 0.0:
            lp -= 0.5 * (b[k] / prior_b_sd) ** 2
            g_b[k] -= b[k] / (prior_b_sd * prior_b_sd)
        g[1 + k] = g_b[k]
    grad[:] = g
    return lp


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _normal_logp_grad(u, grad, proportion, n_obs, ss_within, school, location):
    p_mu = 3
    intercept, lsd, lsigma = u[0], u[1], u[2]
    sigma = np.exp(lsigma)
    g = np.zeros(u.shape[0])
    lp, g_intercept, g_lsd = _school_prior(u, g, p_mu, intercept, lsd)
    inv_var = 1.0 / (sigma * sigma)
    g_lsigma = 0.0
    for i in range(proportion.shape[0]):
        # normal_lpdf(proportion | mu, sigma / sqrt(n)) without its constant
        r = proportion[i] - u[p_mu + school[i]]
        lp -= 0.5 * r * r * n_obs[i] * inv_var + lsigma
        g[p_mu + school[i]] += r * n_obs[i] * inv_var
        g_lsigma += r * r * n_obs[i] * inv_var - 1.0
    extra, ss = n_obs.sum() - proportion.shape[0], ss_within.sum()
    lp -= extra * lsigma + ss * inv_var / 2.0
    g_lsigma += -extra + ss * inv_var
    t, dt = t_lpdf(intercept - location)
    lp += t
    g[0] = g_intercept + dt
    t, dt = t_lpdf(np.exp(lsd))
    lp += t + lsd
    g[1] = g_lsd + dt * np.exp(lsd) + 1.0
    t, dt = t_lpdf(sigma)
    lp += t + lsigma
    g[2] = g_lsigma + dt * sigma + 1.0
    grad[:] = g
    return lp


@functools.cache
def _c_logp(normal: bool):
    """The M0 (normal) or M1 kernel as a C function (compiled on first use; numba caches it on disk)."""
    if normal:
        @numba.cfunc(c_density.LOGP, cache=True, error_model="numpy")
        def logp(dim, x_, grad_, logp_, table_):
            u, grad, t = c_density.arguments(x_, grad_, table_, 5, dim)
            r = c_density.reals
            logp_[0] = _normal_logp_grad(u, grad, r(t, 0), r(t, 1), r(t, 2), c_density.ints(t, 3), c_density.scalar(t, 4))
            return 0
    else:
        @numba.cfunc(c_density.LOGP, cache=True, error_model="numpy")
        def logp(dim, x_, grad_, logp_, table_):
            u, grad, t = c_density.arguments(x_, grad_, table_, 5, dim)
            logp_[0] = _binomial_logp_grad(u, grad, c_density.reals(t, 0), c_density.reals(t, 1), c_density.ints(t, 2),
                                           c_density.matrix(t, 3), c_density.scalar(t, 4))
            return 0
    return logp


def unconstrain(init: dict, data: dict) -> np.ndarray:
    lay = layout(data)
    u = lay.vector(init)
    for name, where in lay.slices().items():
        if name in ("sd_school", "sigma"):
            u[where] = np.log(u[where])   # Stan's lower=0 transform
    return u


def output_names(data: dict) -> list[str]:
    lay = layout(data)
    names = []
    for name, n in lay.sizes().items():
        names += [name] if name in ("Intercept", "sd_school", "sigma") else [f"{name}.{i + 1}" for i in range(n)]
    return names if lay.normal else names + ["b_Intercept"]


def output_rows(u: np.ndarray, data: dict) -> np.ndarray:
    lay = layout(data)
    x = np.array(np.atleast_2d(u), dtype=float)
    s = lay.slices()
    for name in ("sd_school", "sigma"):
        if name in s:
            x[:, s[name]] = np.exp(x[:, s[name]])
    if lay.normal:
        return x
    b_intercept = x[:, 0] - fixed_order_dot(x[:, s["b"]], _x(data).mean(axis=0))
    return np.concatenate([x, b_intercept[:, None]], axis=1)
