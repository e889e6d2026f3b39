"""Several generations answered as one response: batched completion prompts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from herdsman.pipeline.generate import Generation, Step, StepSink

_DONE = object()


class GenerationGroup:
    """The generations of one request, run concurrently, their choices numbered in order."""

    def __init__(self, generations: list[Generation]) -> None:
        self.generations = generations
        self.choices = [c for g in generations for c in g.choices]

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)

    @property
    def cached_tokens(self) -> int:
        return sum(g.cached_tokens for g in self.generations)

    @property
    def pushes(self) -> bool:
        """One generation's steps may be pushed (Generation.push_to); several are merged by
        tasks of their own, so their steps always come through ``run``."""
        return len(self.generations) == 1 and self.generations[0].pushes

    def push_to(self, sink: StepSink) -> None:
        if self.pushes:
            self.generations[0].push_to(sink)

    async def start(self) -> None:
        try:
            await asyncio.gather(*(g.start() for g in self.generations))
        except BaseException:
            await asyncio.gather(*(g.discard() for g in self.generations), return_exceptions=True)
            raise

    async def run(self) -> AsyncIterator[Step]:
        if len(self.generations) == 1:
            async for item in self.generations[0].run():
                yield item
            return
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def pump(generation: Generation) -> None:
            try:
                async for item in generation.run():
                    await queue.put(item)
                await queue.put(_DONE)
            except Exception as exc:  # handed to the consumer, which re-raises it
                await queue.put(exc)

        tasks = [asyncio.create_task(pump(g)) for g in self.generations]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is _DONE:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
