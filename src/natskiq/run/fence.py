"""Stage 5, the node's fence: which master of each shard the node obeys.

Every dispatch carries its master's fencing token, the revision of the
shard's lease (:mod:`natskiq.dispatch.lease`). The fence holds, per shard,
the newest token the node has seen and believed, and how many dispatches
have arrived under it (the ``received`` of the node's demand report, which
the shard's new master counts its credit from). A job whose token is older
than its shard's newest is not started: its master has since been replaced.

It receives tokens two ways. A master in this process hands over its own
token with the jobs, and the node raises the tables as it takes them in
(:meth:`natskiq.run.node.Node.deliver_many` reads them for every job, so
it keeps them inline rather than through a call here). A token that
arrives in a message is believed only once the lease's own key confirms
it (:meth:`Fence.confirm`): a forged one would otherwise fence out every
real master.
"""

from __future__ import annotations

import logging

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq.dispatch.lease import current_token
from natskiq.run.settle import SETTLE_TIMEOUT
from natskiq.topology import Names

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name


@attrs.define
class Fence:
    """Per shard, the newest master token a node has seen, and what came under it.

    Args:
        js: the connection's JetStream context (to read the leases).
        names: the namespace's names.
    """

    js: JetStreamContext
    names: Names
    newest: dict[int, int] = attrs.field(init=False, factory=dict)
    """Per shard, the newest master token seen (and confirmed): older ones are fenced out.

    Changed in place, never replaced: the node's runners keep a reference to it.
    """
    received: dict[int, int] = attrs.field(init=False, factory=dict)
    """Per shard, how many dispatches arrived under its newest token."""

    async def confirm(self, token: int, shard: int) -> bool:
        """Whether ``token`` is at most the shard's lease's (read from its KV key), now this node's newest.

        Tokens that arrive in messages are never believed as they are: a
        forged one would fence out every real master (every node NAKing
        every dispatch). A higher token is taken only once the lease's own
        key confirms it.
        """
        try:
            with anyio.fail_after(SETTLE_TIMEOUT):
                current = await current_token(self.js, self.names, shard)
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("could not read the lease to confirm master token %d: %r", token, exc)
            return False
        if current > self.newest.get(shard, 0):
            self.newest[shard], self.received[shard] = current, 0
        if token > current:
            log.warning(
                "ignoring master token %d of shard %d: the lease's is %d (forged or garbled)",
                token,
                shard,
                current,
            )
        return token <= current

    def report(self) -> tuple[dict[str, int], dict[str, int]]:
        """The tokens and the received counts, keyed by shard, as the demand report carries them."""
        tokens = {str(shard): token for shard, token in self.newest.items()}
        return tokens, {str(shard): count for shard, count in self.received.items()}
