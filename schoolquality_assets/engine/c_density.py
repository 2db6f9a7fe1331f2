"""The hand-written densities as C functions, the form nutpie's compiled models take: nutpie's
threads call the numba kernel directly, without Python or the GIL between gradient evaluations.

A kernel's data reach its C function through one int64 table, three slots per argument:
an array's address and shape (rows, columns), or a scalar's bits. The C function unpacks them
into the same arrays and calls the same kernel (cohort_density._logp_grad, school_density's two),
so logp and gradient are the kernel's own, bit for bit (tested).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# nutpie's C signatures: logp(dim, x, grad out, logp out, user data) and expand(dim, n_expanded, x, out, user data)
LOGP = types.int64(types.uint64, types.CPointer(types.double), types.CPointer(types.double),
                   types.CPointer(types.double), types.voidptr)
EXPAND = types.int64(types.uint64, types.uint64, types.CPointer(types.double), types.CPointer(types.double),
                     types.voidptr)


def table(arguments: tuple) -> np.ndarray:
    """The kernel's arguments (after u and grad) as the C function's table. The arrays must stay
    alive (and unmoved) as long as the table is used: keep ``arguments`` with it."""
    out = np.zeros(3 * len(arguments), dtype=np.int64)
    for i, a in enumerate(arguments):
        if isinstance(a, np.ndarray):
            if not a.flags.c_contiguous or a.dtype not in (np.float64, np.int64):
                raise ValueError(f"argument {i}: a C-contiguous float64 or int64 array is needed, got {a.dtype}")
            shape = a.shape + (1,) * (2 - a.ndim)
            out[3 * i:3 * i + 3] = (a.ctypes.data, shape[0], shape[1])
        else:   # a scalar (bool or float): its float64 bits
            out[3 * i] = np.array(float(a), dtype=np.float64).view(np.int64)
    return out


@intrinsic
def _pointer(typingctx, address):
    """An int64 address as a void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(address), codegen


@numba.njit(inline="always")
def reals(t, i):
    return numba.carray(_pointer(t[3 * i]), (t[3 * i + 1],), np.float64)


@numba.njit(inline="always")
def ints(t, i):
    return numba.carray(_pointer(t[3 * i]), (t[3 * i + 1],), np.int64)


@numba.njit(inline="always")
def matrix(t, i):
    return numba.carray(_pointer(t[3 * i]), (t[3 * i + 1], t[3 * i + 2]), np.float64)


@numba.njit(inline="always")
def scalar(t, i):
    return t[3 * i:3 * i + 1].view(np.float64)[0]


@numba.njit(inline="always")
def arguments(x_, grad_, table_, n_arguments, dim):
    """The point, the gradient to fill, and the table, as arrays."""
    return (numba.carray(x_, (dim,)), numba.carray(grad_, (dim,)),
            numba.carray(table_, (3 * n_arguments,), np.int64))


@functools.cache
def no_expand():
    """An expand function with nothing to add: the engine reads each draw's point from nutpie's trace."""
    @numba.cfunc(EXPAND, cache=True)
    def expand(dim, n_expanded, x_, out_, table_):
        return 0
    return expand


def call(cfunc, u: np.ndarray, arguments_table: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Call a density's C function from Python, as nutpie does (tests): (logp, gradient, return code)."""
    import ctypes

    u = np.ascontiguousarray(u, dtype=np.float64)
    grad, logp = np.empty_like(u), np.empty(1)
    code = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p)(cfunc.address)(u.shape[0], u.ctypes.data, grad.ctypes.data,
                                                            logp.ctypes.data, arguments_table.ctypes.data)
    return float(logp[0]), grad, int(code)
