"""Dynamic batching: requests of any directions queue up and share one ``Translator.translate`` call.

A batch closes when the queued requests fill ``max_batch_tokens`` padded source tokens (longest
sentence x sentences, as fairseq's ``--max-tokens`` counts) or the oldest has waited
``max_wait_s``; it runs in one worker thread, off the event loop, and each request gets its own
translations back in order.  Requests that arrive while a batch runs form the next
one.  asyncio only: no web framework here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, List

#: translate(texts, srcs, tgts) -> one translation per text, in order (one forward pass when the batch fits)
TranslateFn = Callable[[List[str], List[str], List[str]], List[str]]

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's sentences, waiting for their translations."""
    texts: List[str]
    srcs: List[str]
    tgts: List[str]
    lengths: List[int]  # source tokens per text
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gathers jobs into batches and runs each batch in a single worker thread."""

    def __init__(self, translate: TranslateFn, max_batch_tokens: int, max_wait_s: float):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.translate = translate
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self._queue: Deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._draining = False  # stop waiting for fuller batches: the server is stopping
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lslo-translate")
        self._task: "asyncio.Task[None] | None" = None
        self.running = 0  # jobs inside the batch that is being translated
        self.batches = 0
        self.sentences = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lslo-batcher")

    async def submit(self, texts: List[str], srcs: List[str], tgts: List[str], lengths: List[int]) -> List[str]:
        """Queue one request (``lengths``: source tokens per text); its translations, in order."""
        if self._closing:
            raise RuntimeError("the server is shutting down")
        job = Job(texts, srcs, tgts, lengths, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wakeup.set()
        return await job.future

    def drain(self) -> None:
        """From now on run each batch as soon as the worker is free (the server is stopping)."""
        self._draining = True
        self._wakeup.set()

    async def close(self) -> None:
        """Translate everything queued, then stop the worker thread."""
        self._closing = self._draining = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # --- the loop ------------------------------------------------------------------------
    @staticmethod
    def padded_tokens(jobs) -> int:
        """Source tokens of ``jobs`` as one left-padded batch: longest sentence x sentences."""
        lengths = [n for job in jobs for n in job.lengths]
        return max(lengths, default=0) * len(lengths)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _gather(self) -> None:
        """Wait until the queue holds a full batch, the oldest job's wait is over, or the server stops."""
        deadline = self._queue[0].arrived + self.max_wait_s
        while self.padded_tokens(self._queue) < self.max_batch_tokens and not self._draining:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> List[Job]:
        """Jobs from the front of the queue up to max_batch_tokens (at least one); abandoned jobs are dropped."""
        batch: List[Job] = []
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # its client went away
                self._queue.popleft()
                continue
            if batch and self.padded_tokens(batch + [job]) > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
        return batch

    async def _translate(self, jobs: List[Job]) -> List[str]:
        texts = [t for job in jobs for t in job.texts]
        srcs = [s for job in jobs for s in job.srcs]
        tgts = [t for job in jobs for t in job.tgts]
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._executor, self.translate, texts, srcs, tgts)
        if len(out) != len(texts):
            raise RuntimeError(f"the translator returned {len(out)} translations for {len(texts)} sentences")
        return out

    async def _run_batch(self, batch: List[Job]) -> None:
        self.running = len(batch)
        try:
            try:
                out = await self._translate(batch)
            except Exception:
                if len(batch) == 1:
                    raise
                # one request's failure must not fail the others: translate each alone
                log.exception("a batch of %d requests failed; translating them one by one", len(batch))
                for job in batch:
                    await self._run_batch([job])
                return
            self.batches += 1
            self.sentences += len(out)
            start = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(out[start:start + len(job.texts)])
                start += len(job.texts)
        except Exception as e:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
        finally:
            self.running = 0
