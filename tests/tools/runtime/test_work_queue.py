"""`WorkQueue`, the one-thread queue under the label judge and the store's writer: a full or
closed queue refuses and counts, the end gives up on what waits and says what was in hand.
A handler held on an Event: nothing here depends on the scheduler's timing."""

from __future__ import annotations

import threading

from gazeloop.tools.runtime.work_queue import WorkQueue


def held_queue(limit: int):
    """A queue whose handler records each item and then waits for `gate`."""
    gate, entered, seen = threading.Event(), threading.Event(), []

    def handle(item):
        seen.append(item)
        entered.set()
        assert gate.wait(10)

    return WorkQueue("test-queue", handle, limit), gate, entered, seen


def test_items_are_handled_in_order_and_a_full_queue_refuses_and_counts():
    q, gate, entered, seen = held_queue(limit=2)
    assert not q.started  # started by the first item
    assert q.post(1) and entered.wait(10) and q.post(2)
    assert not q.post(3) and q.refused == 1  # two open: one in hand, one waiting
    assert not q.idle(0)
    gate.set()
    assert q.idle(10) and seen == [1, 2]
    assert q.post(4) and q.idle(10) and seen == [1, 2, 4]
    assert q.close() and not q.close()  # closed once
    q.join(10)
    assert not q.is_alive() and not q.post(5) and q.refused == 2


def test_giving_up_drops_what_waits_and_says_what_is_in_hand():
    q, gate, entered, seen = held_queue(limit=8)
    for i in range(4):
        assert q.post(i)
    assert entered.wait(10)
    assert q.drop_waiting() == (3, 1) and q.closed
    assert not q.post(9) and q.refused == 1  # closed by the drop: refused, counted
    assert not q.idle(0)  # not abandoned: the one in hand is still waited for
    gate.set()
    assert q.idle(10) and seen == [0]
    q.join(10)
    assert not q.is_alive()


def test_an_abandoned_queue_is_idle_at_once_and_its_handler_can_tell():
    told = []
    gate, entered = threading.Event(), threading.Event()
    q: WorkQueue[int] = WorkQueue("test-queue", lambda i: handle(i), 8)

    def handle(i):
        entered.set()
        assert gate.wait(10)
        told.append((i, q.abandoned))

    assert q.post(0) and q.post(1) and entered.wait(10)
    assert q.abandon() == (1, 1)
    assert q.idle(0)  # given up on: the end does not wait for it again
    gate.set()
    q.join(10)
    assert told == [(0, True)]


def test_an_item_whose_handler_raises_is_logged_and_the_next_one_is_handled(caplog):
    seen = []

    def handle(i):
        if i == 0:
            raise ValueError("bad item")
        seen.append(i)

    q: WorkQueue[int] = WorkQueue("test-queue", handle, 8)
    assert q.post(0) and q.post(1) and q.idle(10)
    assert seen == [1] and q.is_alive()
    assert "test-queue: an item could not be handled" in caplog.text and "bad item" in caplog.text
    q.close()
    q.join(10)


def test_an_item_is_settled_or_given_up_on_never_both():
    """`settle` is the handler's one step: a settled item is no longer in hand when the end
    gives up, and an item given up on first cannot be settled after."""
    ran, gate, settled = [], threading.Event(), threading.Event()

    def handle(i):
        assert q.settle(lambda: ran.append(i))
        settled.set()
        assert gate.wait(10)  # still in the handler, but settled

    q: WorkQueue[int] = WorkQueue("test-queue", handle, 8)
    assert q.post(0) and settled.wait(10)
    assert q.idle(0) and q.abandon() == (0, 0)  # nothing in hand to give up on
    gate.set()
    q.join(10)
    assert ran == [0] and not q.is_alive()

    told, entered, gate2 = [], threading.Event(), threading.Event()

    def handle2(i):
        entered.set()
        assert gate2.wait(10)
        told.append(q2.settle(lambda: told.append(i)))

    q2: WorkQueue[int] = WorkQueue("test-queue-2", handle2, 8)
    assert q2.post(5) and entered.wait(10)
    assert q2.abandon() == (0, 1)  # in hand, not settled: given up on
    gate2.set()
    q2.join(10)
    assert told == [False]  # refused, and its fn not run
