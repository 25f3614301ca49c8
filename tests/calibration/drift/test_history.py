from __future__ import annotations

import threading

import numpy as np
import pytest

from gazeloop.calibration.drift.history import Entry, History

MS = 1_000_000  # ns


def _filled(*samples: tuple[int, tuple[float, ...]], **kw: float) -> History:
    h = History(**kw)
    for t, xy in samples:
        h.append(t, np.array(xy))
    return h


# ---- lookup and interpolation ----


def test_at_interpolates_linearly_between_neighbours() -> None:
    h = _filled((0, (0.0, 0.0)), (10 * MS, (1.0, 2.0)), (20 * MS, (1.0, -2.0)))
    np.testing.assert_allclose(h.at(4 * MS, 10 * MS), [0.4, 0.8], rtol=0, atol=1e-15)
    np.testing.assert_allclose(h.at(15 * MS, 10 * MS), [1.0, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(h.at(19 * MS, 10 * MS), [1.0, -1.6], rtol=0, atol=1e-15)


def test_at_exact_hit_returns_the_sample_even_with_zero_gap() -> None:
    h = _filled((0, (0.0, 0.0)), (10 * MS, (1.0, 2.0)), (500 * MS, (3.0, 3.0)))
    np.testing.assert_array_equal(h.at(10 * MS, 0), [1.0, 2.0])
    # An isolated sample (far from both neighbours) is still found exactly.
    np.testing.assert_array_equal(h.at(500 * MS, 0), [3.0, 3.0])
    np.testing.assert_array_equal(h.at(0, 0), [0.0, 0.0])


def test_at_returns_a_writable_copy() -> None:
    h = _filled((0, (0.0, 0.0)), (10 * MS, (1.0, 2.0)))
    for t in (0, 5 * MS):
        v = h.at(t, 10 * MS)
        v += 100.0
    np.testing.assert_array_equal(h.at(0, 0), [0.0, 0.0])
    np.testing.assert_array_equal(h.at(10 * MS, 0), [1.0, 2.0])


def test_at_rejects_gaps_larger_than_max_gap() -> None:
    h = _filled((0, (0.0,)), (100 * MS, (1.0,)), (110 * MS, (2.0,)))
    assert h.at(50 * MS, 49 * MS) is None
    np.testing.assert_allclose(h.at(50 * MS, 50 * MS), [0.5])
    # One close neighbour is not enough: the far side (a blink) must be close too.
    assert h.at(5 * MS, 20 * MS) is None
    assert h.at(95 * MS, 20 * MS) is None
    np.testing.assert_allclose(h.at(105 * MS, 20 * MS), [1.5])


def test_at_outside_the_buffer_is_none() -> None:
    h = _filled((10 * MS, (1.0, 1.0)), (20 * MS, (2.0, 2.0)))
    assert h.at(10 * MS - 1, 10**12) is None
    assert h.at(20 * MS + 1, 10**12) is None
    assert History().at(0, 10**12) is None


def test_nearest_picks_the_closer_sample_within_gap() -> None:
    h = History()
    h.append(0, np.array([0.0, 0.0]), payload="a")
    h.append(10 * MS, np.array([1.0, 1.0]), payload="b")
    hit = h.nearest(7 * MS, 5 * MS)
    assert isinstance(hit, Entry)
    assert (hit.t_ns, hit.payload) == (10 * MS, "b")
    np.testing.assert_array_equal(hit.xy, [1.0, 1.0])
    assert h.nearest(3 * MS, 5 * MS).payload == "a"
    assert h.nearest(5 * MS, 5 * MS).t_ns == 0  # a tie goes to the earlier sample
    assert h.nearest(-4 * MS, 5 * MS).t_ns == 0
    assert h.nearest(14 * MS, 5 * MS).t_ns == 10 * MS
    assert h.nearest(16 * MS, 5 * MS) is None
    assert h.nearest(-6 * MS, 5 * MS) is None
    assert History().nearest(0, 10**12) is None


def test_window_is_inclusive_and_ordered() -> None:
    h = History()
    for i in range(10):
        h.append(i * MS, np.array([float(i)]), payload=i)
    w = h.window(2 * MS, 5 * MS)
    assert [e.t_ns for e in w] == [2 * MS, 3 * MS, 4 * MS, 5 * MS]
    assert [e.payload for e in w] == [2, 3, 4, 5]
    assert [float(e.xy[0]) for e in w] == [2.0, 3.0, 4.0, 5.0]
    assert h.window(2 * MS + 1, 3 * MS - 1) == []
    assert h.window(5 * MS, 2 * MS) == []
    assert len(h.window(-(10**12), 10**12)) == 10


def test_returned_arrays_cannot_change_the_buffer() -> None:
    h = _filled((0, (1.0, 2.0)))
    with pytest.raises(ValueError):
        h.latest().xy[0] = 5.0
    with pytest.raises(ValueError):
        h.window(0, 0)[0].xy[0] = 5.0
    # The caller's array is copied on append.
    src = np.array([7.0, 8.0])
    h.append(MS, src)
    src[:] = 0.0
    np.testing.assert_array_equal(h.at(MS, 0), [7.0, 8.0])


# ---- ordering, replacement, bounds ----


def test_out_of_order_appends_are_sorted() -> None:
    h = _filled((30 * MS, (3.0,)), (10 * MS, (1.0,)), (20 * MS, (2.0,)), (0, (0.0,)))
    assert [e.t_ns for e in h.window(0, 30 * MS)] == [0, 10 * MS, 20 * MS, 30 * MS]
    np.testing.assert_allclose(h.at(15 * MS, 10 * MS), [1.5])
    assert h.latest().t_ns == 30 * MS


def test_duplicate_time_replaces() -> None:
    h = History()
    h.append(5, np.array([1.0, 1.0]), payload="old")
    h.append(5, np.array([2.0, 3.0]), payload="new")
    assert len(h) == 1
    e = h.latest()
    assert (e.t_ns, e.payload) == (5, "new")
    np.testing.assert_array_equal(e.xy, [2.0, 3.0])


def test_bounded_by_count_keeps_the_newest() -> None:
    h = History(max_len=5)
    for i in range(12):
        h.append(i * MS, np.array([float(i)]))
    assert len(h) == 5
    assert [e.t_ns for e in h.window(0, 10**12)] == [i * MS for i in range(7, 12)]
    # A late sample older than everything kept is dropped at once.
    h.append(0, np.array([0.0]))
    assert len(h) == 5
    assert h.window(0, 0) == []


def test_bounded_by_age_of_the_newest_sample() -> None:
    s = 1_000_000_000
    h = History(max_age_s=1.0)
    for t in (0, s // 2, s, 3 * s // 2):
        h.append(t, np.array([t / s]))
    # The newest is 1.5 s: samples older than 0.5 s go; exactly 0.5 s stays.
    assert [e.t_ns for e in h.window(0, 10 * s)] == [s // 2, s, 3 * s // 2]
    h.append(5 * s, np.array([5.0]))
    assert [e.t_ns for e in h.window(0, 10 * s)] == [5 * s]
    # An old, out-of-order sample does not survive its own append.
    h.append(s, np.array([1.0]))
    assert len(h) == 1


def test_latest_len_and_clear() -> None:
    h = History()
    assert h.latest() is None
    assert len(h) == 0
    assert h.dim is None
    h.append(1, np.array([0.5, 0.5]), payload={"k": 1})
    h.append(3, np.array([0.6, 0.4]))
    assert len(h) == 2
    assert h.latest().t_ns == 3
    h.clear()
    assert len(h) == 0
    assert h.latest() is None
    assert h.at(1, 10) is None
    assert h.dim == 2  # the buffer still holds 2-D values
    with pytest.raises(ValueError):
        h.append(4, np.array([1.0, 2.0, 3.0]))


# ---- validation ----


def test_dimension_is_fixed_by_the_first_append() -> None:
    h = _filled((0, (0.1, 0.2)))
    with pytest.raises(ValueError, match="holds 2"):
        h.append(1, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="holds 2"):
        h.append(1, np.array([0.1]))
    assert len(h) == 1


@pytest.mark.parametrize(
    "xy",
    [np.zeros((2, 2)), np.zeros(0), np.array(1.0), np.array([np.nan, 0.0]), np.array([np.inf])],
)
def test_bad_values_are_rejected(xy: np.ndarray) -> None:
    h = History()
    with pytest.raises(ValueError):
        h.append(0, xy)
    assert len(h) == 0


def test_float_times_are_rejected() -> None:
    h = History()
    with pytest.raises(TypeError):
        h.append(1.5, np.zeros(2))  # type: ignore[arg-type]
    h.append(np.int64(2), np.zeros(2))  # numpy integers are fine
    assert h.latest().t_ns == 2


@pytest.mark.parametrize(
    "kw", [{"max_age_s": 0.0}, {"max_age_s": -1.0}, {"max_age_s": float("inf")}, {"max_len": 0}]
)
def test_bad_bounds_are_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        History(**kw)


# ---- concurrency ----


def test_one_writer_two_readers_see_consistent_state() -> None:
    # Every assertion below holds however the scheduler interleaves the threads: a reader may
    # be preempted between any two calls while the writer appends (and evicts) hundreds of
    # samples, so nothing here assumes that one call still sees what the previous one saw,
    # only what the buffer guarantees: appends in time order, eviction of the oldest first.
    n, cap, step = 5_000, 500, MS
    h = History(max_age_s=3600.0, max_len=cap)
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0, 0]

    def oldest() -> Entry:
        return h.nearest(0, 10**18)  # every time is >= 0: the nearest to 0 is the oldest

    def writer() -> None:
        try:
            for i in range(n):
                # Values are linear in time, so any interpolation must land on the line.
                h.append(i * step, np.array([float(i), 2.0 * i]), payload=i)
        except BaseException as e:  # the main thread asserts none happened
            errors.append(e)
        finally:
            done.set()

    def reader(k: int) -> None:
        try:
            # Ends on a count, not a time: each reader reads on until the writer is done and
            # it has read 50 times.
            while not done.is_set() or reads[k] < 50:
                assert len(h) <= cap
                last = h.latest()
                if last is None:
                    continue
                # Reaches further back than the buffer can hold: every sample <= last.
                w = h.window(last.t_ns - 2 * cap * step, last.t_ns)
                assert len(w) <= cap
                if not w:
                    # Empty only if the writer evicted everything up to `last` in between;
                    # the oldest sample only moves forward, so it is newer than `last` now.
                    assert oldest().t_ns > last.t_ns
                    reads[k] += 1
                    continue
                # Eviction drops the oldest first: if anything <= last is left, last is.
                assert w[-1].t_ns == last.t_ns and w[-1].payload == last.payload
                ts = [e.t_ns for e in w]
                # Appends are in order and eviction drops the oldest: always contiguous.
                assert all(b - a == step for a, b in zip(ts, ts[1:], strict=False))
                for e in w:
                    assert e.payload == e.t_ns // step
                    assert e.xy[0] == e.payload and e.xy[1] == 2.0 * e.payload
                t = w[0].t_ns + (w[-1].t_ns - w[0].t_ns) // 3 + step // 2
                v = h.at(t, step)
                if v is None:
                    # Only outside the buffer: past the newest sample, or evicted meanwhile.
                    assert t > last.t_ns or oldest().t_ns > t
                else:
                    assert v[0] == pytest.approx(t / step)
                    assert v[1] == pytest.approx(2.0 * t / step)
                reads[k] += 1
        except BaseException as e:  # the main thread asserts none happened
            errors.append(e)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert min(reads) >= 50
    assert len(h) == cap
    assert h.latest().t_ns == (n - 1) * step
    assert h.window(0, 10**15)[0].t_ns == (n - cap) * step
