// Tether from Node.js with the official NATS client: one JSON request on tether.infer, then every
// stored result replayed from the RESULTS stream with an ordered consumer.
// usage: node node_client.mjs NATS_URL INPUT [INPUT ...]   -> one JSON line on stdout
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

const [url, ...inputs] = process.argv.slice(2);
const nc = await connect({ servers: url });
const replies = [];
for (const input of inputs) {
  const body = { tenantId: "node", modelId: "echo", version: "1", input };
  const msg = await nc.request("tether.infer", JSON.stringify(body), { timeout: 20_000 });
  replies.push(msg.json());
}

const js = jetstream(nc);
const consumer = await js.consumers.get("RESULTS", { filter_subjects: ["tether.results.*"] });
const replayed = [];
while (replayed.length < replies.length) {
  const m = await consumer.next({ expires: 5_000 });
  if (m === null) break;
  replayed.push({ subject: m.subject, seq: m.seq, result: m.json() });
}
console.log(JSON.stringify({ replies, replayed }));
await nc.close();
