"""libstdc++'s `std::sort`, step for step, so that ties come out in the order the MSSEG-2016
evaluator (Anima, built with GCC on Linux) sees them.

`std::sort` is not stable: equal elements may be permuted, and which way depends on the
algorithm (introsort: median-of-three quicksort down to blocks of 16, heapsort past a depth limit,
then one insertion sort). Anima sorts each lesion's overlapping components with it, and when two
components overlap a lesion equally, the one it looks at first can decide whether the lesion
counts as detected. Python's `sorted` is stable and would break such ties differently.
"""
from __future__ import annotations

from typing import Callable, MutableSequence

_THRESHOLD = 16  # libstdc++'s _S_threshold


def std_sort(a: MutableSequence, less: Callable[[object, object], bool]) -> None:
  """Sorts `a` in place exactly as libstdc++'s std::sort(first, last, comp) does."""
  n = len(a)
  if n > 1:
    _introsort_loop(a, 0, n, 2 * (n.bit_length() - 1), less)
    _final_insertion_sort(a, 0, n, less)


def _introsort_loop(a, first, last, depth_limit, less):
  while last - first > _THRESHOLD:
    if depth_limit == 0:
      _heap_sort(a, first, last, less)  # std::__partial_sort(first, last, last)
      return
    depth_limit -= 1
    cut = _unguarded_partition_pivot(a, first, last, less)
    _introsort_loop(a, cut, last, depth_limit, less)
    last = cut


def _unguarded_partition_pivot(a, first, last, less):
  mid = first + (last - first) // 2
  _move_median_to_first(a, first, first + 1, mid, last - 1, less)
  return _unguarded_partition(a, first + 1, last, first, less)


def _move_median_to_first(a, result, i, j, k, less):
  if less(a[i], a[j]):
    if less(a[j], a[k]):
      pick = j
    elif less(a[i], a[k]):
      pick = k
    else:
      pick = i
  elif less(a[i], a[k]):
    pick = i
  elif less(a[j], a[k]):
    pick = k
  else:
    pick = j
  a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a, first, last, pivot, less):
  while True:
    while less(a[first], a[pivot]):
      first += 1
    last -= 1
    while less(a[pivot], a[last]):
      last -= 1
    if not first < last:
      return first
    a[first], a[last] = a[last], a[first]
    first += 1


def _final_insertion_sort(a, first, last, less):
  if last - first > _THRESHOLD:
    _insertion_sort(a, first, first + _THRESHOLD, less)
    for i in range(first + _THRESHOLD, last):  # __unguarded_insertion_sort
      _unguarded_linear_insert(a, i, less)
  else:
    _insertion_sort(a, first, last, less)


def _insertion_sort(a, first, last, less):
  for i in range(first + 1, last):
    if less(a[i], a[first]):
      val = a[i]
      a[first + 1:i + 1] = a[first:i]
      a[first] = val
    else:
      _unguarded_linear_insert(a, i, less)


def _unguarded_linear_insert(a, last, less):
  val = a[last]
  nxt = last - 1
  while less(val, a[nxt]):
    a[last] = a[nxt]
    last = nxt
    nxt -= 1
  a[last] = val


# ---- heapsort fallback: std::__make_heap, std::__pop_heap, std::__adjust_heap, std::__push_heap

def _heap_sort(a, first, last, less):
  _make_heap(a, first, last, less)
  while last - first > 1:
    last -= 1
    value = a[last]
    a[last] = a[first]
    _adjust_heap(a, first, 0, last - first, value, less)


def _make_heap(a, first, last, less):
  length = last - first
  if length < 2:
    return
  parent = (length - 2) // 2
  while True:
    _adjust_heap(a, first, parent, length, a[first + parent], less)
    if parent == 0:
      return
    parent -= 1


def _adjust_heap(a, first, hole, length, value, less):
  top = hole
  child = hole
  while child < (length - 1) // 2:
    child = 2 * (child + 1)
    if less(a[first + child], a[first + child - 1]):
      child -= 1
    a[first + hole] = a[first + child]
    hole = child
  if length % 2 == 0 and child == (length - 2) // 2:
    child = 2 * (child + 1)
    a[first + hole] = a[first + child - 1]
    hole = child - 1
  parent = (hole - 1) // 2  # __push_heap
  while hole > top and less(a[first + parent], value):
    a[first + hole] = a[first + parent]
    hole = parent
    parent = (hole - 1) // 2
  a[first + hole] = value
