// Enqueue one natskiq job from Node.js, exactly as the README's wire format says:
//   node enqueue.mjs <nats url> <namespace> <queue> <class> <json args>
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { randomBytes } from "node:crypto";

const [url, namespace, queue, cls, args] = process.argv.slice(2);
const nc = await connect({ servers: url });
const js = jetstream(nc);
const jid = randomBytes(12).toString("hex");
const now = Date.now() / 1000;
const job = { jid, class: cls, args: JSON.parse(args), kwargs: {}, queue, retry: 25,
              created_at: now, enqueued_at: now };
const h = headers();
h.set("Nats-Msg-Id", `${jid}:0`);
const ack = await js.publish(`${namespace}.queue.${queue}`, JSON.stringify(job), { headers: h });
console.log(JSON.stringify({ jid, stream: ack.stream, seq: ack.seq }));
await nc.close();
