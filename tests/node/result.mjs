// Enqueue one natskiq job that keeps its result, then wait for that result and
// follow the job's events, all as docs/wire-format.md says:
//   node result.mjs <nats url> <namespace> <queue> <class> <json args> <keep_result seconds>
// Prints one JSON object: the jid, the outcome document, how it was found (by
// the get or on the subscription), the key's value read afterwards, and every
// event of the job up to its succeeded event (with its subject and sequence).
import { connect, headers } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { randomBytes } from "node:crypto";

const [url, namespace, queue, cls, args, keep] = process.argv.slice(2);
const deadline = setTimeout(() => {
  console.error("timed out waiting for the job's result and events");
  process.exit(2);
}, 30_000);

// A class as one subject token: its first 128 characters (code points), "." written
// as ":" and any other character outside A-Za-z0-9_- as "_" ("_" when empty).
const classToken = (name) =>
  [...name].slice(0, 128).map((c) => (c === "." ? ":" : /[A-Za-z0-9_-]/.test(c) ? c : "_")).join("") || "_";

const nc = await connect({ servers: url });
const js = jetstream(nc);
const jid = randomBytes(12).toString("hex");

// Subscribe to the result's KV subject first: a result stored from now on arrives here.
const resultSubject = `$KV.${namespace}_results.${jid}`;
const arrivals = nc.subscribe(resultSubject, { max: 1 });

// Every event of this job, from the first one the stream holds.
const consumer = await js.consumers.get(`${namespace.toUpperCase()}_EVENTS`, {
  filter_subjects: `${namespace}.evt.*.*.*.${jid}`,
});
const followed = (async () => {
  const events = [];
  for await (const m of await consumer.consume()) {
    const event = m.json();
    events.push({ subject: m.subject, seq: m.seq, ...event });
    if (event.state === "succeeded") break;
  }
  return events;
})();

const now = Date.now() / 1000;
const job = { jid, class: cls, args: JSON.parse(args), kwargs: {}, queue, retry: 25,
              created_at: now, enqueued_at: now, keep_result: Number(keep) };
const h = headers();
h.set("Nats-Msg-Id", `${jid}:0`);
await js.publish(`${namespace}.queue.${queue}`, JSON.stringify(job), { headers: h });
// Stored: say so, as a natskiq producer does (a core publish, not acked).
const queued = { jid, queue, class: cls, state: "queued", at: Date.now() / 1000 };
nc.publish(`${namespace}.evt.${queue}.${classToken(cls)}.queued.${jid}`, JSON.stringify(queued));

// Then read the key once: a result stored before the subscription is found here,
// one stored after it arrives on the subscription.
const kv = await new Kvm(js).open(`${namespace}_results`);
const outcome = (entry) =>
  entry !== null && entry.operation === "PUT" && entry.length > 0 ? entry.json() : null;
let result = outcome(await kv.get(jid));
let via = "get";
if (result === null) {
  nc.publish(`${namespace}.wire.waiting`, jid); // for the test only: lets the job finish now
  for await (const m of arrivals) [result, via] = [m.json(), "subscription"];
} else {
  arrivals.unsubscribe();
}
const stored = outcome(await kv.get(jid)); // and the key holds it
const events = await followed;
console.log(JSON.stringify({ jid, result, via, stored, events }));
clearTimeout(deadline);
await nc.close();
