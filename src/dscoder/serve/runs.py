"""One HTTP request's scheduler jobs as events on the event loop, and what streaming needs: incremental text
and Server-Sent Events.

`Run` submits one `infer.scheduler.Job` per prompt (n choices each) and yields (choice, event) as the scheduler
thread emits them; a non-streaming request passes its Request so a client that disconnects cancels its jobs (a
streaming response is cancelled by Starlette, and `Run` cancels its jobs when the generator closes).
"""
from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, AsyncIterator

from .schema import ApiError, bad


class Mailbox:
    """Events from the scheduler thread onto one event loop, with one wake-up of the loop for all the events of a
    scheduler step (every running request gets a token per step) instead of one per event: `put` only collects,
    the scheduler calls `flush` (the jobs' `flush`) after each step."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.pending = loop, deque(), False

    def put(self, q: asyncio.Queue, item: Any) -> None:
        """From the scheduler thread. Raises once the loop is closed (the scheduler then drops the job)."""
        if self.loop.is_closed():
            raise RuntimeError("the event loop is closed")
        self.items.append((q, item))

    def flush(self) -> None:
        """From the scheduler thread: wake the loop to hand over what was put, unless a wake-up is pending."""
        if self.items and not self.pending:
            self.pending = True
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self.pending = False                # before draining: what is put meanwhile is handed over by a later flush
        while self.items:
            q, item = self.items.popleft()
            q.put_nowait(item)


def mailbox(served, loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The served model's mailbox onto `loop` (made on first use)."""
    box = served.mailbox
    if box is None or box.loop is not loop:
        box = served.mailbox = Mailbox(loop)
    return box


class Run:
    """The scheduler jobs of one HTTP request (one per prompt, n choices each) and their events on this loop.
    Choice c of the response is choice c % n of prompt c // n (OpenAI's order)."""

    def __init__(self, served, prompts: list[list[int]], params, n: int, length_param: str = "max_tokens"):
        from ..infer.scheduler import Job
        box, self.q, self.n, self.served = mailbox(served, asyncio.get_running_loop()), asyncio.Queue(), n, served
        self.jobs: list = []
        context = served.scheduler.max_len
        for i, p in enumerate(prompts):
            if len(p) + params.max_tokens > context:
                which = f"prompt {i} has" if len(prompts) > 1 else "the prompt has"
                raise bad(length_param, f"this model's context is {context} tokens; {which} {len(p)} tokens and "
                                        f"{length_param} is {params.max_tokens}, {len(p) + params.max_tokens} in "
                                        f"all: shorten the prompt or lower {length_param}")
        checked = [served.scheduler.check(p, params, n) for p in prompts]    # all or nothing is queued
        try:
            for i, ids in enumerate(checked):
                # called from the scheduler thread; once the loop is closed it raises and the scheduler drops the job
                emit = (lambda ev, i=i: box.put(self.q, (i, ev)))
                self.jobs.append(served.scheduler.submit(Job(ids, params, emit, n=n, decode=served.decode,
                                                             flush=box.flush)))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    async def events(self, watch=None) -> AsyncIterator[tuple[int, Any]]:
        """(choice, Tokens | Finished) until every choice finished; `watch` (a Request) cancels the jobs when its
        client disconnects. A Failed event raises ApiError 500."""
        from ..infer.scheduler import Failed, Finished
        left = len(self.jobs) * self.n
        gone = asyncio.ensure_future(_disconnected(watch)) if watch is not None else None
        try:
            while left:
                if gone is None:                    # streaming: a plain await (no task per event)
                    i, ev = await self.q.get()
                else:
                    get = asyncio.ensure_future(self.q.get())
                    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        raise ClientGone()
                    i, ev = await get
                if isinstance(ev, Failed):
                    raise ApiError(500, f"generation failed: {ev.message}", type_="server_error")
                left -= isinstance(ev, Finished)
                yield i * self.n + ev.index, ev
        finally:
            if gone is not None:
                gone.cancel()
            self.cancel()
            for job in self.jobs:
                if job.first_token_at is not None:
                    self.served.metrics.first_token(job.first_token_at - job.submitted)


class ClientGone(Exception):
    """The client of a non-streaming request disconnected; its jobs were cancelled and nothing is sent."""


async def _disconnected(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Detok:
    """Incremental text of one choice: emits only complete characters, and the final (stop-cut) text's rest."""

    def __init__(self, decode):
        self.decode, self.ids, self.sent = decode, [], ""

    def add(self, ids: list[int]) -> str:
        self.ids += ids
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self, final: str) -> str:
        return final[len(self.sent):] if final.startswith(self.sent) else ""


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def logprobs_object(served, entries: list[dict] | None, ids: list[int], offset: int = 0) -> dict | None:
    """OpenAI's completions logprobs object for `ids` (tokens as text, one dict of alternatives per token)."""
    if entries is None:
        return None
    toks = [served.decode([t]) for t in ids]
    offsets, at = [], offset
    for t in toks:
        offsets.append(at)
        at += len(t)
    top = [{served.decode([a]): lp for a, lp in e["top"]} for e in entries]
    return {"tokens": toks, "token_logprobs": [e["logprob"] for e in entries], "top_logprobs": top,
            "text_offset": offsets}
