"""A chain: fetch a page, count its words, store the count; each step after the one before::

    natskiq worker --app examples.chain      # runs the steps
    python -m examples.chain [nats://127.0.0.1:4222]

The URL is argv[1], else ``$NATSKIQ_URL``; ``$NATSKIQ_NAMESPACE`` picks the namespace.
"""

from __future__ import annotations

import asyncio
import sys

import natskiq


# Named: run as `python -m`, this module is __main__ here and examples.chain in the worker.
class Fetch(natskiq.Worker, name="examples.chain.Fetch"):
    async def perform(self, url: str) -> str:
        print(f"[{self.job.queue}] fetched {url} (jid={self.jid})", flush=True)
        return f"<p>the page at {url} has seven words</p>"


class CountWords(natskiq.Worker, name="examples.chain.CountWords"):
    async def perform(self, html: str) -> int:  # html: what Fetch returned (pass_result)
        words = len(html.removeprefix("<p>").removesuffix("</p>").split())
        print(f"[{self.job.queue}] counted {words} words (jid={self.jid})", flush=True)
        return words


class Store(natskiq.Worker, name="examples.chain.Store"):
    async def perform(self, words: int, url: str) -> str:  # words: what CountWords returned
        print(f"[{self.job.queue}] stored {words} for {url} (jid={self.jid})", flush=True)
        return f"{url}: {words} words"


async def main(url: str | None) -> None:
    async with natskiq.connect(url):
        page = "https://example.com"
        handle = await natskiq.chain(
            Fetch.s(page),
            CountWords.s().set(pass_result=True),  # receives Fetch's return value first
            Store.s(page).set(pass_result=True),  # receives CountWords's, then its own page
        ).enqueue()
        print(f"chain {handle.chain_id}: steps {' '.join(handle.jids)}")
        print(f"result {await handle.result(timeout=60)}")  # the last step's return value


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
