// Plays one parity scenario with the JS client (clients/js/jetsock.js) and prints what the
// application saw, as JSON, for tests/clients/test_parity.py. The same program is played by
// drive_py.py with the Python client; the test compares both traces.
//
//   node tests/clients/drive_js.mjs <ws url> '<program json>'
import { createRequire } from "node:module";
import { Jetsock } from "../../clients/js/jetsock.js";

const require = createRequire(new URL("../../clients/js/package.json", import.meta.url));
const WebSocket = require("ws");

const [url, programText] = process.argv.slice(2);
const program = JSON.parse(programText);
const trace = [];
const record = (...event) => trace.push(event);

let tokenCalls = 0;
async function token() {
  const value = program.token[Math.min(tokenCalls, program.token.length - 1)];
  tokenCalls++;
  record("token", tokenCalls);
  if (value === "!throw") throw new Error("token endpoint down");
  return value;
}

// The program's options are named as in the Python client; this maps them.
const options = {};
if (program.options?.auto_connect === false) options.autoConnect = false;
const client = new Jetsock(url, { WebSocket, token, ...options });
client.on("state", (state, info) => {
  if (state === "reconnecting") record("state", state, { code: info.code, delayMs: info.delayMs });
  else if (state === "closed" || state === "disconnected")
    record("state", state, { code: info.code, loggedOut: info.loggedOut === true });
  else record("state", state);
});
client.on("error", () => {}); // errors show in the trace through the room and the publishes

const rooms = new Map();
function join(step) {
  const opts = {};
  if (step.since != null) opts.since = step.since;
  if (step.epoch != null) opts.epoch = step.epoch;
  if (step.last != null) opts.last = step.last;
  const room = client.join(step.room, opts);
  rooms.set(step.room, room);
  room.on("state", (state, info) => {
    if (state === "joined") record("room", room.name, state, { recovered: info.recovered, seq: info.seq });
    else if (state === "left") record("room", room.name, state, { reason: info.reason });
    else record("room", room.name, state);
  });
  room.on("message", (msg) => record("message", msg.room, msg.seq));
  room.on("reset", (info) => record("reset", info.room, info.reason, info.seq));
  // Each presence event, with the members the room holds once it is applied.
  room.on("presence", ({ joined, left }) => {
    const members = Object.fromEntries([...room.members].map(([sub, m]) => [sub, [m.connections, m.info ?? null]]));
    record("presence", room.name, { joined: joined.map((u) => u.sub), left: left.map((u) => u.sub), members });
  });
}

const settle = (promise, ok, fail) => promise.then(ok, (err) => fail(err));
const pending = [];

// `any`: a list of event prefixes; an event matching one of them counts.
function count(any) {
  return trace.filter((event) => any.some((match) => match.every((value, i) => event[i] === value))).length;
}

async function until(any, n = 1, timeoutMs = 15000) {
  const end = Date.now() + timeoutMs;
  while (count(any) < n) {
    if (Date.now() > end) {
      record("timeout", JSON.stringify(any));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

for (const step of program.steps) {
  switch (step.do) {
    case "join":
      join(step);
      break;
    case "ready":
      pending.push(
        settle(
          rooms.get(step.room).ready(),
          () => record("ready", step.room, "ok"),
          (err) => record("ready", step.room, "error", err.code),
        ),
      );
      break;
    case "publish":
      pending.push(
        settle(
          client.publish(step.room, step.data ?? { text: "hi" }, { id: step.id }),
          (ack) => record("publish", step.id, "ok", ack.seq, ack.duplicate),
          (err) => record("publish", step.id, "error", err.code),
        ),
      );
      break;
    case "until":
      await until(step.any, step.count ?? 1);
      break;
    case "disconnect":
      client.disconnect();
      break;
    case "connect":
      client.connect();
      break;
    case "sleep":
      await new Promise((resolve) => setTimeout(resolve, step.ms));
      break;
    default:
      throw new Error(`unknown step ${step.do}`);
  }
}
record("end");
client.close();
await Promise.allSettled(pending);
process.stdout.write(JSON.stringify({ trace }) + "\n");
process.exit(0);
