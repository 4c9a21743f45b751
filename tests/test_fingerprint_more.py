"""More fingerprint rules: structured dtypes, byte order, reuse after an error, nesting."""

import enum
from collections import Counter, namedtuple

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mergeagg import fingerprint
from mergeagg.fingerprint import Fingerprinter


def test_structured_arrays_differ_by_field_names_and_types():
    a = np.zeros(3, dtype=[("x", "<i8"), ("y", "<f8")])
    b = np.zeros(3, dtype=[("u", "<i8"), ("v", "<f8")])
    c = np.zeros(3, dtype=[("x", "<f8"), ("y", "<i8")])
    assert a.tobytes() == b.tobytes() == c.tobytes()
    assert len({fingerprint(a), fingerprint(b), fingerprint(c)}) == 3
    assert fingerprint(a) == fingerprint(a.copy())


def test_array_byte_order_is_part_of_the_dtype():
    little = np.arange(4, dtype="<i4")
    big = little.astype(">i4")
    assert fingerprint(little) != fingerprint(big)
    assert fingerprint(big) == fingerprint(big.copy())


def test_a_failed_fingerprinter_refuses_further_use():
    f = Fingerprinter()
    f.update([1, 2])
    with pytest.raises(TypeError, match=r"type object at value\[1\]"):
        f.update(["ok", object()])
    with pytest.raises(ValueError, match="start a new Fingerprinter"):
        f.hexdigest()
    with pytest.raises(ValueError, match="start a new Fingerprinter"):
        f.update(3)


def test_streaming_several_values_differs_from_one_list():
    f = Fingerprinter().update_many([1, 2])
    assert f.hexdigest() != fingerprint([1, 2])
    assert f.hexdigest() == Fingerprinter().update_many([1, 2]).hexdigest()


def test_subclasses_of_scalars_and_tuples():
    class Color(enum.IntEnum):
        RED = 1

    Point = namedtuple("Point", "x y")
    assert fingerprint(Color.RED) == fingerprint(1)
    assert fingerprint(Point(1, 2)) == fingerprint((1, 2))
    with pytest.raises(TypeError, match="MyList"):
        class MyList(list):
            pass
        fingerprint(MyList([1]))


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=40),
       st.dictionaries(st.text(max_size=5), st.integers(), max_size=40))
def test_nested_counters_fingerprint_as_nested_dicts(d1, d2):
    nested = {"a": Counter(d1), "b": [Counter(d2)], "c": {frozenset(d1): 1}}
    plain = {"a": dict(d1), "b": [dict(d2)], "c": {frozenset(d1): 1}}
    assert fingerprint(nested) == fingerprint(plain)
    if d1 != d2:
        assert fingerprint(dict(d1)) != fingerprint(dict(d2))


@given(st.lists(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                          st.text(max_size=3)), max_size=50))
def test_mixed_keys_in_big_and_small_chunks_agree(keys):
    # Mixed key types (and ints beyond 64 bits) take the item-by-item digest path, which
    # must be order-free like the vectorised one.
    d = {k: i for i, k in enumerate(keys)}
    items = list(d.items())
    assert fingerprint(dict(items)) == fingerprint(dict(reversed(items)))


@given(st.lists(st.text(alphabet=st.characters(exclude_categories=()), max_size=6)
                | st.text(alphabet="ab", max_size=3), max_size=60))
@example(["a\ud800", "", "\udfff\U0001f600"] * 3 + ["é"] * 10)
def test_vectorised_str_runs_equal_item_by_item(xs):
    # 16+ strs take the vectorised path; encoding the same items one by one must agree,
    # non-ASCII text and lone surrogates included.
    f1 = Fingerprinter()
    f1.update(xs)
    f2 = Fingerprinter()
    f2._buf += b"l" + len(xs).to_bytes(8, "little")
    for x in xs:
        f2.update(x)
    assert f1.hexdigest() == f2.hexdigest()
    assert fingerprint(tuple(xs)) != fingerprint(xs)


def test_empty_and_datetime_arrays():
    assert fingerprint(np.zeros((0, 3))) == fingerprint(np.zeros((0, 3)))
    assert fingerprint(np.zeros((0, 3))) != fingerprint(np.zeros((3, 0)))
    assert fingerprint(np.zeros(0, dtype=np.int64)) != fingerprint(np.zeros(0))
    days = np.array(["2024-01-01", "2024-02-29"], dtype="M8[D]")
    assert fingerprint(days) == fingerprint(days.copy())
    assert fingerprint(days) != fingerprint(days.astype("M8[s]"))
    assert fingerprint(days) != fingerprint(days.view(np.int64))
    assert fingerprint(np.array([5], dtype="m8[s]")) != fingerprint(np.array([5], dtype="m8[ms]"))
    assert fingerprint(np.array(3.0)) != fingerprint(3.0)


# -- the bulk encoder against a reference that encodes one value at a time ---------------------


class _Stand:
    """A value with the opt-in hook (its stand-in may nest anything)."""

    def __init__(self, value):
        self.value = value

    def __mergeagg_fingerprint__(self):
        return self.value


class _StandList(list):
    """A list subclass with the hook: encoded through its hook, not as a list."""

    def __mergeagg_fingerprint__(self):
        return ("rows", list(self))


def _reference(x):
    """The documented encoding, written out independently, one value at a time (the subset
    the bulk encoder handles)."""
    import struct

    t = type(x)
    if x is None:
        return b"N"
    if t is bool:
        return b"T" if x else b"F"
    if t is int:
        if -(2**63) <= x < 2**63:
            return b"i" + struct.pack("<q", x)
        b = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
        return b"I" + struct.pack("<Q", len(b)) + b
    if t is float:
        return b"f" + struct.pack("<d", x)
    if t is str:
        b = x.encode("utf-8", "surrogatepass")
        return b"s" + struct.pack("<Q", len(b)) + b
    if t is bytes:
        return b"b" + struct.pack("<Q", len(x)) + x
    if t in (list, tuple):
        head = (b"l" if t is list else b"t") + struct.pack("<Q", len(x))
        return head + b"".join(map(_reference, x))
    name = f"{t.__module__}.{t.__qualname__}"
    return b"H" + _reference(name) + _reference(x.__mergeagg_fingerprint__())


_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False), st.text(), st.binary(),
                    st.sampled_from(["\ud800", "é", "", "a\udfff"]))
_nested = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.tuples(inner, inner),
                            inner.map(_Stand), st.lists(inner, max_size=4).map(_StandList)),
    max_leaves=80,
)


@given(st.lists(_nested, max_size=40))
@example([[("a", 1, None)] * 20, [(b"x", 1.5, True)]])
@example([[], (), [[]], ([],)])
def test_bulk_encoding_equals_the_one_value_at_a_time_reference(items):
    import hashlib

    expected = b"l" + len(items).to_bytes(8, "little") + b"".join(map(_reference, items))
    assert fingerprint(items) == hashlib.sha256(expected).hexdigest()


@given(st.lists(_nested, min_size=1, max_size=30))
def test_nested_dict_values_digest_as_their_encoding(items):
    # A dict's per-entry digest of a nested value is SHA-256("e" + encoding)[:16]; runs of
    # such values are digested together and must agree with one value at a time.
    d = dict(enumerate(items))
    one_by_one = Fingerprinter()
    expected = np.array([one_by_one._digest_one(v) for v in items], dtype=np.uint64)
    assert (Fingerprinter()._digests(items) == expected).all()
    assert fingerprint(d) == fingerprint(dict(reversed(list(d.items()))))
