"""Unpickling the CIFAR python-2 batches without being able to run code.

Only (checked stand-ins for) numpy's array and dtype reconstructors are allowed; numpy's own
``__setstate__`` never sees untrusted state, and the pure-Python unpickler is used because the C
one grows its memo table to any index a damaged file names.
"""

from __future__ import annotations

import math
import pickle
import re
from typing import IO, Any

import numpy as np

from simclr.errors import SimCLRError, corrupt_error


class _Stub:
    """What the unpickler builds instead of a numpy dtype or array, until BUILD gives its state.

    numpy's own ``__setstate__`` is never run on untrusted state (damaged states can leave
    arrays that crash the interpreter); `build` checks the state and makes a fresh one.
    """

    def __init__(self, kind: str, descr: Any = None) -> None:
        self.kind, self.descr = kind, descr

    def build(self, state: Any) -> Any:
        if self.kind == "dtype":  # state (3, byte order, ...); descr such as "u1", "<i8"
            order = _text(state[1]) if isinstance(state, tuple) and len(state) > 1 else None
            descr = _text(self.descr)
            if order not in ("<", ">", "|", "=") or not re.fullmatch(r"[<>|=]?[biuf][1248]", descr):
                raise pickle.UnpicklingError(f"unsupported dtype {descr!r} {order!r}")
            dtype = np.dtype(descr.lstrip("<>|="))
            return dtype.newbyteorder(order) if order in "<>" else dtype
        if isinstance(state, tuple) and len(state) == 5:  # (version, shape, dtype, fortran, data)
            state = state[1:]
        shape, dtype, fortran, data = state if isinstance(state, tuple) and len(state) == 4 \
            else (None,) * 4
        if isinstance(data, str):
            data = data.encode("latin-1")  # how numpy stores bytes read as a py2 str
        ok = (isinstance(shape, tuple) and len(shape) <= 32 and isinstance(dtype, np.dtype)
              and all(type(n) is int and n >= 0 for n in shape) and isinstance(data, bytes))
        if not ok or len(data) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError("an array's shape, dtype and data do not match")
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


_NDARRAY = object()  # stands for numpy.ndarray, the class argument of _reconstruct


def _reconstruct_stub(cls: Any, shape: Any, typecode: Any) -> _Stub:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return _Stub("array")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_stub,  # how numpy 1.x named it
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_stub,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): lambda descr, align=False, copy=True: _Stub("dtype", descr),
}


class _ArrayUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Builds numpy arrays, dicts, lists, strings and numbers, and nothing else.

    The pure-Python unpickler, not the C one: its memo is a dict, where the C unpickler
    allocates an array as long as the largest memo index a (damaged) file names, gigabytes
    from 5 bytes.
    """

    dispatch = pickle._Unpickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise SimCLRError(f"{self.source} tries to load '{module}.{name}': refused, dataset "
                              "pickles may only hold arrays; delete it and download the "
                              "official file") from None

    def load_build(self) -> None:
        state, stub = self.stack.pop(), self.stack[-1]
        if not isinstance(stub, _Stub):
            raise pickle.UnpicklingError(f"BUILD of a {type(stub).__name__}")
        self.stack[-1] = built = stub.build(state)
        for key, value in list(self.memo.items()):
            if value is stub:
                self.memo[key] = built

    dispatch[pickle.BUILD[0]] = load_build


def restricted_load(fileobj: IO[bytes], source: str | None = None) -> Any:
    """Unpickle a dataset file without the ability to run code.

    Python-2 pickles (the CIFAR python version) are read with ``encoding="bytes"``, so their
    dict keys are byte strings (``b"data"``, ``b"labels"``). Only numpy's array and dtype
    reconstructors may be referenced, and they are replaced by checked builders of plain
    arrays (bool, int, uint and float dtypes); any other global (``os.system``,
    ``builtins.eval``...) raises SimCLRError before anything is called.

    Args:
        fileobj: a binary file object.
        source: the name used in error messages (default: the file object's ``name``).
    """
    source = source or str(getattr(fileobj, "name", "pickle"))
    try:
        result = _ArrayUnpickler(fileobj, source).load()
    except SimCLRError:
        raise
    except Exception as e:  # any failure decoding untrusted bytes means a damaged file
        raise corrupt_error(source, e) from None
    if isinstance(result, _Stub):
        raise corrupt_error(source, pickle.UnpicklingError("an array without its state"))
    return result

__all__ = ["restricted_load"]
