"""The original experiment's vote, `max(set(preds), key=preds.count)` per row, vectorised and exact.

Where one class has the most votes that is the answer. Where several tie, `max` returns the tied class that
iteration over the set meets first, i.e. the one in the lowest slot of CPython's hash table. For small
non-negative ints, hash(i) == i, so the table `set(row)` builds is a pure function of the row, and it is
emulated here with numpy, following Objects/setobject.c (the same in CPython 3.7 to 3.14):

* `set(row)` adds the items one by one in row order; an item already present changes nothing.
* A set starts with a table of 8 slots (PySet_MINSIZE). A key goes to the first empty slot of its probe
  sequence: slot i = hash & mask, and with it the next LINEAR_PROBES (9) slots when they all lie within the
  table; then perturb >>= 5 (PERTURB_SHIFT), i = (5 * i + 1 + perturb) & mask, and so on.
* Once fill * 5 >= mask * 3 after an insertion, the table grows to the smallest power of two above
  4 * used (2 * used past 50,000 keys, far beyond a row), and the old entries are reinserted in the order of
  their old slots, with the same probing.
* Iteration visits the slots in order.

Before its first use, the emulation is compared with the real expression on rows that cover every subset
size up to 20 and class ranges that force collisions and resizes; should the running interpreter differ,
a `ClipzsWarning` says so and tied rows are evaluated by the expression itself.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from .errors import ClipzsWarning

_SMALL = 8  # PySet_MINSIZE, the table of a new set
_LINEAR_PROBES = 9
_PERTURB_SHIFT = 5
_MAX_ID = 2**61 - 2  # hash(i) == i for 0 <= i < 2**61 - 1, the modulus of CPython's int hash
_BLOCK_ELEMENTS = 1 << 21  # predictions per block: temporaries stay near 100 MB
_SENTINEL = np.int8(127)  # above every slot
_GROUP = (1 << (_LINEAR_PROBES + 1)) - 1  # a probed slot and the linear probes after it, as bits
_LOWEST_BIT = np.array([0] + [(v & -v).bit_length() - 1 for v in range(1, _GROUP + 1)], dtype=np.int64)


def _grown(used: int) -> int:
    """The table size set_table_resize picks for `used` keys: the smallest power of two above 4 * used."""
    size = _SMALL
    while size <= used * 4:
        size *= 2
    return size


def _full_at(size: int) -> int:
    """How many keys make a table of `size` slots grow: the first fill with fill * 5 >= mask * 3."""
    return -(-(size - 1) * 3 // 5)


_SMALL_FULL = _full_at(_SMALL)  # 5: the 5th key grows it...
_LARGE = _grown(_SMALL_FULL)  # ...to 32 slots, kept as the bits of an int64
_LARGE_FULL = _full_at(_LARGE)  # 19: the 19th key grows that to 128, beyond the emulation: such rows go to Python
_LUT_KEYS = 4096  # keys with a precomputed slot for every occupancy of the small table
# [occupied bits of a small table, t]: the slot of its t-th key, in slot order
_NTH_BIT = np.array([[b for b in range(8) if v >> b & 1] + [0] * (8 - v.bit_count()) for v in range(256)])


def vote_seed(preds: np.ndarray) -> np.ndarray:
    """`max(set(row), key=row.count)` for each row of preds [R, K] (class ids >= 0), as int64 [R].

    Rows without a tie take the class with the most votes; only tied rows need the set emulation. Any
    integer array works, and so does a CPU tensor. Memory: one block of rows at a time.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] == 0 or not np.issubdtype(preds.dtype, np.integer):
        raise ValueError(f"preds must be integers of shape [rows, K >= 1], got {preds.dtype} {preds.shape}")
    out = np.empty(len(preds), dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // preds.shape[1])
    for start in range(0, len(preds), step):
        block = preds[start : start + step].T.astype(np.int64, order="C")  # [K, rows]: columns are contiguous
        if block.min() < 0 or block.max() > _MAX_ID:
            raise ValueError(f"class ids must lie in [0, {_MAX_ID}], where hash(i) == i")
        out[start : start + step] = _vote_block(block)
    return out


def _vote_block(preds: np.ndarray) -> np.ndarray:
    """The rule on the rows of preds [K, rows] (transposed)."""
    counts, first = _tally(preds)
    top = counts.max(axis=0)
    leader = counts == top
    out = preds[leader.argmax(axis=0), np.arange(preds.shape[1])]
    tied = np.flatnonzero(leader.sum(axis=0) > top)
    if tied.size:
        rows = preds.take(tied, axis=1)
        if _emulation_verified():
            out[tied] = _emulate(rows, counts.take(tied, axis=1), first.take(tied, axis=1), top[tied])
        else:
            out[tied] = _python(rows)
    return out


def _tally(preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For preds [K, rows]: the votes of each entry's class in its row, and whether the entry is its first."""
    k = preds.shape[0]
    counts = np.ones(preds.shape, dtype=np.min_scalar_type(k))
    first = np.ones(preds.shape, dtype=bool)
    for b in range(1, k):
        for a in range(b):
            same = preds[a] == preds[b]
            counts[a] += same
            counts[b] += same
            first[b] &= ~same
    return counts, first


def _python(preds: np.ndarray) -> np.ndarray:
    """The rule itself, row by row, on preds [K, rows]."""
    return np.array([max(set(row), key=row.count) for row in preds.T.tolist()], dtype=np.int64)


def _emulated(preds: np.ndarray) -> np.ndarray:
    """The rule on every row of preds [K, rows] through the emulation, tied or not."""
    counts, first = _tally(preds)
    return _emulate(preds, counts, first, counts.max(axis=0))


def _emulate(preds: np.ndarray, counts: np.ndarray, first: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Build each row's set table (module docstring); the answer is the tied class in the lowest slot.

    Rows are independent, so each step runs over all rows at once: the first _SMALL_FULL distinct keys
    into the small table, then the growth of every table that filled, then the remaining keys.
    """
    k, n = preds.shape
    slots = np.full((k, n), _SENTINEL, dtype=np.int8)  # each class's slot, at its first entry in the row
    occupied = np.zeros(n, dtype=np.int64)  # bit s: slot s holds a key
    used = np.zeros(n, dtype=np.int8)
    small_table = np.zeros(_SMALL * n + 1, dtype=np.int64)  # [slot * n + row]: the key's column; last: discard
    largest = int(preds.max()) if preds.size else 0
    lut = _small_lut(max(64, 1 << largest.bit_length())) if largest < _LUT_KEYS else None
    flat, every = preds.ravel(), np.arange(n)
    for col in range(k):
        add = first[col] & (used < _SMALL_FULL)
        key = preds[col]
        slot = lut[(key << 8) | occupied].astype(np.int64) if lut is not None else _probe(key, occupied, _SMALL - 1)
        occupied = np.where(add, occupied | np.left_shift(1, slot), occupied)
        slots[col] = np.where(add, slot, _SENTINEL)
        small_table[np.where(add, slot * n + every, _SMALL * n)] = col
        used += add
    grow = np.flatnonzero(used == _SMALL_FULL)
    old, table = occupied[grow], np.zeros(len(grow), dtype=np.int64)
    for t in range(_SMALL_FULL):  # set_table_resize: the old keys in the order of their slots
        at = small_table[_NTH_BIT[old, t] * n + grow] * n + grow  # [column, row] of the key, flattened
        slot = _probe(flat[at], table, _LARGE - 1)
        table |= np.left_shift(1, slot)
        slots.ravel()[at] = slot
    occupied[grow] = table
    for col in range(k):
        rows = np.flatnonzero(first[col] & (slots[col] == _SENTINEL) & (used < _LARGE_FULL))
        if rows.size:
            key, occ = preds[col][rows], occupied[rows]
            slot = _probe(key, occ, _LARGE - 1)
            occupied[rows] = occ | np.left_shift(1, slot)
            slots[col, rows] = slot
            used[rows] += 1
    best, winner = np.full(n, _SENTINEL, dtype=np.int8), np.zeros(n, dtype=np.int64)
    for col in range(k):
        rank = np.where(first[col] & (counts[col] == top), slots[col], _SENTINEL)
        winner[rank < best] = col
        np.minimum(best, rank, out=best)
    out = flat[winner * n + every]
    beyond = np.flatnonzero(used >= _LARGE_FULL)
    if beyond.size:
        out[beyond] = _python(preds[:, beyond])
    return out


def _probe(key: np.ndarray, occupied: np.ndarray, mask: int) -> np.ndarray:
    """The slot each key (its own hash, not yet in its table) lands in, given the table's occupied bits."""
    i = key & mask
    found, slot = _look(i, occupied, mask)
    todo = np.flatnonzero(~found)
    perturb, i, occupied = key[todo], i[todo], occupied[todo]
    while todo.size:
        perturb = np.right_shift(perturb, _PERTURB_SHIFT)
        i = (i * 5 + 1 + perturb) & mask
        found, at = _look(i, occupied, mask)
        slot[todo[found]] = at[found]
        left = ~found
        todo, perturb, i, occupied = todo[left], perturb[left], i[left], occupied[left]
    return slot


def _look(i: np.ndarray, occupied: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """Whether slot i, or one of the LINEAR_PROBES slots after it when they all fit in the table, is free;
    and the first free one."""
    if mask < _LINEAR_PROBES:  # no room for linear probes
        return np.right_shift(~occupied, i) & 1 != 0, i
    free = np.right_shift(~occupied, i) & np.where(i + _LINEAR_PROBES <= mask, _GROUP, 1)
    return free != 0, i + _LOWEST_BIT[free]


@functools.cache
def _small_lut(keys: int) -> np.ndarray:
    """slot = lut[key << 8 | occupied bits]: where a key < `keys` (a power of two up to _LUT_KEYS: only as many as
    the classes need, since building it costs) lands in a small table with a free slot."""
    key = np.repeat(np.arange(keys, dtype=np.int64), 255)
    occupied = np.tile(np.arange(255, dtype=np.int64), keys)
    lut = np.zeros(keys * 256, dtype=np.uint8)
    lut[key * 256 + occupied] = _probe(key, occupied, _SMALL - 1)
    return lut


@functools.cache
def _emulation_verified() -> bool:
    """Whether the emulation reproduces this interpreter's `set` on rows built to stress it (once a process)."""
    rng = np.random.default_rng(20240611)
    for k in range(1, 21):
        rows = np.concatenate(
            [rng.integers(0, c, size=(k, 12), dtype=np.int64) for c in (2, 3, 8, 9, 33, 100, 1000, 2**20, 2**40)],
            axis=1,
        )
        for part in (rows[:, :-24], rows[:, -24:]):  # small class ids, then large ones (no lookup table)
            if not np.array_equal(_emulated(part), _python(part)):
                warnings.warn(
                    "vote-seed: this Python's set order differs from the emulation of CPython's; "
                    "tied votes are evaluated row by row in Python instead (exact, but slower)",
                    ClipzsWarning,
                    stacklevel=4,
                )
                return False
    return True
