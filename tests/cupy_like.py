"""An array module that refuses what CuPy refuses, for checking on the CPU that the
reference ops also run on CuPy arrays.

The reference ops (:class:`gpubackprop.backend.numpy_ops.NumpyOps` and the
activation table) are written against an array module ``xp`` and inherited
unchanged by the GPU backend wherever it has no fused kernel. NumPy accepts
keywords and functions that CuPy does not, and a call that works here can raise
``TypeError`` on the GPU. :data:`CUPY_LIKE` is NumPy with CuPy's rules for what
this package uses:

* a ufunc takes only the keywords ``out``, ``dtype`` and ``casting`` (CuPy's
  ``_kernel.pyx`` pops exactly these and raises ``TypeError('Wrong arguments')``
  on any other, ``where=`` included);
* functions CuPy lacks are missing (:data:`NOT_IN_CUPY`).

``CUPY_LIKE`` operates on plain NumPy arrays, so results can be compared with
NumPy's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: CuPy ufuncs accept these keywords and no other (cupy/_core/_kernel.pyx, ufunc.__call__)
UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})

#: NumPy functions with no CuPy counterpart (that code in this package might reach for)
NOT_IN_CUPY = frozenset({"errstate", "seterr", "vectorize", "frompyfunc", "nditer", "ma"})


class RefusedByCupy(TypeError):
    """A call that CuPy would refuse."""


class _CupyLikeUfunc:
    def __init__(self, ufunc: np.ufunc) -> None:
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        refused = set(kwargs) - UFUNC_KEYWORDS
        if refused:
            raise RefusedByCupy(
                f"{self._ufunc.__name__}: CuPy's ufuncs take only {sorted(UFUNC_KEYWORDS)}, "
                f"got {sorted(refused)}"
            )
        return self._ufunc(*args, **kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        if "where" in kwargs or "initial" in kwargs:
            raise RefusedByCupy(f"{self._ufunc.__name__}.reduce: CuPy takes no where/initial")
        return self._ufunc.reduce(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        raise RefusedByCupy(f"{self._ufunc.__name__}.{name}: not used with CuPy here")


class _CupyLikeModule:
    """NumPy, with CuPy's refusals (see the module docstring)."""

    __name__ = "cupy_like"

    def __getattr__(self, name: str) -> Any:
        if name in NOT_IN_CUPY:
            raise RefusedByCupy(f"{name} is NumPy-only: CuPy has no {name}")
        obj = getattr(np, name)
        if isinstance(obj, np.ufunc):
            return _CupyLikeUfunc(obj)
        if callable(obj) and name in _WITH_WHERE:
            return _no_where(name, obj)
        return obj


def _no_where(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Reductions such as ``sum`` take ``where=`` in NumPy, not in CuPy."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if "where" in kwargs or "initial" in kwargs:
            raise RefusedByCupy(f"{name}: CuPy's {name} takes no where/initial")
        return function(*args, **kwargs)

    return call


_WITH_WHERE = frozenset({"sum", "prod", "max", "min", "amax", "amin", "mean", "all", "any"})

#: the array module to hand to reference ops in tests
CUPY_LIKE: Any = _CupyLikeModule()
