"""User code shipped to workers keeps its file and line in tracebacks (whatever name
cloudpickle gives the code of functions it ships by value)."""

import pickle
import sys

import cloudpickle
import pytest

import mergeagg as ma
from mergeagg.runtime.pickling import dumps

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _closure():
    def inner(x):
        return [y * 2 for y in x]  # a nested code object (the comprehension) too

    return lambda xs: inner(xs)


def test_code_objects_keep_their_file_name_nested_ones_too():
    f = pickle.loads(dumps(_closure()))
    assert f([1, 2]) == [2, 4]
    assert f.__code__.co_filename == __file__
    inner = f.__closure__[0].cell_contents
    assert inner.__code__.co_filename == __file__
    nested = [c for c in inner.__code__.co_consts if hasattr(c, "co_filename")]
    assert all(c.co_filename == __file__ for c in nested)


def test_plain_cloudpickle_would_lose_it():
    # The reason this module exists: if this starts to pass on a new cloudpickle, the
    # workaround may be dropped.
    f = cloudpickle.loads(cloudpickle.dumps(_closure()))
    if f.__code__.co_filename == __file__:
        pytest.skip("this cloudpickle keeps file names by itself")
    assert f.__code__.co_filename != __file__


def test_a_worker_traceback_shows_the_users_file_line_and_source():
    def combine(a, b):
        raise ValueError("combine broke here")  # the line the traceback must show

    agg = ma.Aggregator(len, combine)
    with pytest.raises(ma.TaskFailed) as info:
        ma.run(agg, [[1], [2]], workers=1, max_attempts=1)
    tb = info.value.traceback
    assert f'File "{__file__}"' in tb
    assert 'raise ValueError("combine broke here")' in tb
    assert "<dynamic-code>" not in tb
