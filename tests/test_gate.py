"""The fanout's gate: exclusive work waits for shared work and holds new shared work back."""

from __future__ import annotations

import asyncio

from imchat.server.gate import Gate


async def test_exclusive_waits_for_shared_and_holds_new_ones_back() -> None:
    gate = Gate()
    order: list[str] = []
    release_first = asyncio.Event()
    first_in = asyncio.Event()

    async def first() -> None:
        async with gate.shared():
            first_in.set()
            await release_first.wait()
            order.append("first done")

    async def exclusive() -> None:
        async with gate.exclusive():
            order.append("exclusive")

    async def later() -> None:
        async with gate.shared():
            order.append("later")

    task_first = asyncio.create_task(first())
    await first_in.wait()
    task_exclusive = asyncio.create_task(exclusive())
    await asyncio.sleep(0)  # let it close the gate
    task_later = asyncio.create_task(later())
    await asyncio.sleep(0)
    assert order == []  # the exclusive one waits for the first; the later one for the gate
    release_first.set()
    await asyncio.gather(task_first, task_exclusive, task_later)
    assert order == ["first done", "exclusive", "later"]


async def test_shared_operations_run_together() -> None:
    gate = Gate()
    both_in = asyncio.Barrier(2)

    async def op() -> None:
        async with gate.shared():
            await asyncio.wait_for(both_in.wait(), 1)

    await asyncio.gather(op(), op())
