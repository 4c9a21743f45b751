"""The fixed-shape combine tree: its shape depends only on the number of leaves and fan-in.

Leaves are the split indices ``0 .. n-1``. Level 0 holds the leaves; each level groups its
nodes into consecutive runs of ``fan_in`` (the last run may be shorter) and each run becomes
one node of the next level, folded left to right in index order:
``combine(combine(c0, c1), c2)``. A run of one node passes through unchanged. The top level
has one node, the root. Because nothing depends on completion order, even float
accumulators give the same bytes whatever failed, retried or raced.

>>> level_sizes(10, 4)
[10, 3, 1]
>>> children(1, 2, 10, 4)
[8, 9]
>>> fold_fixed([1, 2, 3, 4, 5], lambda a, b: f"({a}+{b})", 2)
'(((1+2)+(3+4))+5)'
"""

from __future__ import annotations

__all__ = ["level_sizes", "children", "parent", "fold_fixed", "check_fan_in"]


def check_fan_in(fan_in):
    """Validate a fan-in (an int of at least 2)."""
    if isinstance(fan_in, bool) or not isinstance(fan_in, int):
        raise TypeError(f"fan_in must be an int, got {type(fan_in).__name__}")
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    return fan_in


def level_sizes(n, fan_in):
    """Number of nodes on each level, leaves first, root last. Cost: O(log n)."""
    if n < 1:
        raise ValueError("a combine tree needs at least one leaf")
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // fan_in))
    return sizes


def children(level, index, n, fan_in):
    """Indices (on ``level - 1``) of the children of node ``index`` on ``level``."""
    below = level_sizes(n, fan_in)[level - 1]
    lo = index * fan_in
    return list(range(lo, min(lo + fan_in, below)))


def parent(level, index, fan_in):
    """``(level + 1, index // fan_in)``: the node a node feeds."""
    return level + 1, index // fan_in


def fold_fixed(values, combine, fan_in):
    """Fold an iterable of values (in leaf order) along the fixed tree, streaming.

    Holds at most ``fan_in`` values per level at once. Cost: ``n - 1`` combines.
    Raises ``ValueError`` for no values.
    """
    check_fan_in(fan_in)
    stacks = [[]]

    def push(level, value):
        if level == len(stacks):
            stacks.append([])
        stacks[level].append(value)
        if len(stacks[level]) == fan_in:
            group = stacks[level]
            stacks[level] = []
            push(level + 1, _fold_group(group, combine))

    count = 0
    for v in values:
        push(0, v)
        count += 1
    if count == 0:
        raise ValueError("nothing to fold: the source gave no shards")
    # Flush short trailing runs bottom-up; they are the last (shorter) runs of their levels.
    level = 0
    while True:
        higher = any(stacks[lv] for lv in range(level + 1, len(stacks)))
        run = stacks[level]
        if not higher and len(run) == 1:
            return run[0]
        stacks[level] = []
        if run:
            value = _fold_group(run, combine)
            if level + 1 == len(stacks):
                stacks.append([])
            stacks[level + 1].append(value)
        level += 1


def _fold_group(group, combine):
    acc = group[0]
    for v in group[1:]:
        acc = combine(acc, v)
    return acc
