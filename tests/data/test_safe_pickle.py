import io
import os
import pickle

import numpy as np
import pytest

from tasks.data.safe_pickle import UnsafePickleError, safe_loads


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_a_pickle_that_would_run_code():
    payload = pickle.dumps({"data": _RunsCode()})
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_loads(payload)


def test_refuses_arbitrary_globals_even_harmless_ones():
    payload = pickle.dumps(io.BytesIO)  # a class reference, not data
    with pytest.raises(UnsafePickleError):
        safe_loads(payload)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_loads_plain_containers_and_arrays(protocol):
    data = {b"labels": [1, 2, 3], b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
            "name": "batch", "x": 1.5, "t": (1, None, True)}
    out = safe_loads(pickle.dumps(data, protocol=protocol), encoding="bytes")
    assert out[b"labels"] == [1, 2, 3]
    np.testing.assert_array_equal(out[b"data"], data[b"data"])
    assert out["name"] == "batch" and out["t"] == (1, None, True)
