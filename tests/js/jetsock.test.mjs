// Unit and behavioural tests of clients/js/jetsock.js: `node --test tests/js/`.
// The client runs against a fake WebSocket driven by hand, with node's mock
// timers (setTimeout and Date) so reconnect delays and heartbeats are exact.

import { test, describe, beforeEach, afterEach, mock } from "node:test";
import assert from "node:assert/strict";
import Default, { Jetsock, JetsockError, backoffDelay, closePolicy } from "../../clients/js/jetsock.js";

const flush = () => new Promise((resolve) => setImmediate(resolve)); // setImmediate is not mocked

// Node 20's mock.timers.tick(ms) moves Date to the end of the whole step before
// it runs the due callbacks, and skips timers those callbacks set. Advancing in
// small steps keeps Date.now() right inside timer callbacks.
function advance(ms, step = 1) {
  for (let left = ms; left > 0; left -= step) mock.timers.tick(Math.min(step, left));
}

// Unhandled rejections anywhere fail the test that caused them.
const unhandled = [];
process.on("unhandledRejection", (err) => unhandled.push(err));

// A seeded PRNG (mulberry32) for reproducible distributions.
function seeded(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("backoffDelay", () => {
  test("bounds for attempts 0..10 with random 0 and ~1", () => {
    for (let a = 0; a <= 10; a++) {
      const ceiling = Math.min(30000, 1000 * 2 ** a);
      assert.equal(backoffDelay(a, { random: () => 0 }), 0);
      const hi = backoffDelay(a, { random: () => 0.9999999 });
      assert.ok(hi < ceiling, `attempt ${a}: ${hi} < ${ceiling}`);
      assert.ok(hi >= ceiling - 1, `attempt ${a}: ${hi} close to ${ceiling}`);
    }
  });

  test("capped at 30000 however large the attempt", () => {
    for (const a of [5, 10, 50, 1000, 1e6]) {
      assert.ok(backoffDelay(a, { random: () => 0.9999999 }) < 30000);
      assert.ok(backoffDelay(a, { random: () => 0.9999999 }) >= 29999);
    }
    assert.equal(backoffDelay(2, { base: 500, factor: 3, cap: 10000, random: () => 0.5 }), 2250);
    assert.equal(backoffDelay(3, { base: 500, factor: 3, cap: 10000, random: () => 0.5 }), 5000);
  });

  test("full jitter: uniform over [0, ceiling)", () => {
    const random = seeded(42);
    const n = 20000;
    const ceiling = 8000; // attempt 3
    const buckets = [0, 0, 0, 0];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const d = backoffDelay(3, { random });
      assert.ok(d >= 0 && d < ceiling && Number.isInteger(d));
      sum += d;
      buckets[Math.floor((d / ceiling) * 4)]++;
    }
    assert.ok(Math.abs(sum / n - ceiling / 2) < ceiling * 0.02, `mean ${sum / n}`);
    for (const b of buckets) assert.ok(Math.abs(b / n - 0.25) < 0.02, `buckets ${buckets}`);
  });
});

describe("closePolicy", () => {
  const backoff = { reconnect: true, immediate: false, minDelayMs: 0, refreshToken: false, requireNewToken: false };
  const terminal = { ...backoff, reconnect: false };
  const table = {
    1000: terminal,
    1001: { ...backoff, immediate: true },
    1006: backoff,
    1009: terminal,
    1011: backoff,
    1012: { ...backoff, immediate: true },
    1013: backoff,
    4000: backoff,
    4001: { ...backoff, refreshToken: true },
    4008: backoff,
    4009: backoff,
    4029: { ...backoff, minDelayMs: 5000 },
    4499: backoff,
    4500: terminal,
    4501: { ...backoff, refreshToken: true, requireNewToken: true },
    4503: terminal,
    4999: terminal,
  };
  for (const [code, want] of Object.entries(table)) {
    test(`code ${code}`, () => assert.deepEqual(closePolicy(Number(code)), want));
  }

  test("4000-4499 recoverable with backoff, 4500-4999 terminal", () => {
    for (let c = 4000; c <= 4499; c++) {
      const p = closePolicy(c);
      assert.equal(p.reconnect, true, `${c}`);
      assert.equal(p.immediate, false, `${c}`);
    }
    for (let c = 4500; c <= 4999; c++) assert.equal(closePolicy(c).reconnect, c === 4501, `${c}`);
  });

  test("unknown codes back off", () => {
    for (const c of [1002, 1005, 1015, 3000, undefined]) assert.deepEqual(closePolicy(c), backoff);
  });
});

// --- behaviour against a fake WebSocket ---

function setup({ token, options = {} } = {}) {
  const sockets = [];
  class FakeWS {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closed = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }
    // drivers for the tests
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    recv(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
  }
  const tokenCalls = [];
  let n = 0;
  const source =
    token ??
    (async (ctx) => {
      tokenCalls.push({ ...ctx, socketsBefore: sockets.length });
      return `tok${++n}`;
    });
  const client = new Jetsock("ws://test/ws", { WebSocket: FakeWS, token: source, ...options });
  const states = [];
  const errors = [];
  client.on("state", (s, info) => states.push([s, info]));
  client.on("error", (e) => errors.push(e));
  const env = { client, sockets, states, errors, tokenCalls, last: () => sockets.at(-1), lastState: () => states.at(-1) };
  clients.push(client);
  return env;
}

// Let the pending attempt create its socket, open it and say welcome.
async function connect(env, welcome = {}) {
  await flush();
  const ws = env.last();
  ws.open();
  ws.recv({ type: "welcome", session: "s1", node: "n1", heartbeat: 25, exp: 2e9, ...welcome });
  return ws;
}

// Fire the pending reconnect timer and connect again.
async function reconnect(env, welcome) {
  const [state, info] = env.lastState();
  assert.equal(state, "reconnecting");
  const before = env.sockets.length;
  advance(info.delayMs);
  await flush();
  assert.equal(env.sockets.length, before + 1, "a new socket after the delay");
  return connect(env, welcome);
}

const clients = [];

describe("Jetsock client", () => {
  beforeEach(() => {
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
    unhandled.length = 0;
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await flush();
    mock.timers.reset();
    assert.deepEqual(unhandled, [], "no unhandled rejections");
  });

  test("default export is Jetsock", () => assert.equal(Default, Jetsock));

  test("connect offers subprotocols, waits for welcome, then joins", async () => {
    const env = setup();
    const room = env.client.join("chat.lobby", { onMessage: () => {} });
    assert.deepEqual(env.states, []); // starts after the caller's synchronous code
    await flush();
    assert.deepEqual(env.states, [["connecting", undefined]]);
    const ws = env.last();
    assert.equal(ws.url, "ws://test/ws");
    assert.deepEqual(ws.protocols, ["jetsock.v1", "bearer.tok1"]);
    assert.deepEqual(env.tokenCalls.map((c) => c.reason), ["connect"]);
    ws.open();
    assert.deepEqual(ws.sent, [], "nothing before welcome");
    ws.recv({ type: "welcome", session: "s1", node: "n1", heartbeat: 25, exp: 2e9 });
    assert.deepEqual(env.lastState(), ["connected", { session: "s1", node: "n1" }]);
    assert.deepEqual(ws.sent, [{ type: "join", room: "chat.lobby", ref: 1 }]);
    assert.equal(room.state, "joining");
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 10, recovered: false, ref: 1 });
    assert.equal(room.state, "joined");
    assert.equal(room.lastSeq, 10);
    assert.equal(room.epoch, "e1");
    // joining while connected sends at once
    env.client.join("chat.other");
    assert.deepEqual(ws.sent.at(-1), { type: "join", room: "chat.other", ref: 2 });
    assert.throws(() => env.client.join("chat.lobby"), (e) => e.code === "already_joined");
    assert.throws(() => env.client.join("bad room"), (e) => e.code === "invalid_room");
  });

  test("1006 drop: reconnecting with backoff, rejoin resumes with since and epoch, duplicates dropped", async () => {
    const env = setup();
    const got = [];
    const room = env.client.join("chat.lobby", { onMessage: (m) => got.push(m.seq) });
    const ws1 = await connect(env);
    ws1.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 10, recovered: false, ref: 1 });
    for (const seq of [11, 11, 9, 13]) ws1.recv({ type: "msg", room: "chat.lobby", seq, ts: 1, data: { seq } });
    assert.deepEqual(got, [11, 13]);
    assert.equal(room.lastSeq, 13);

    ws1.drop(1006);
    const [state, info] = env.lastState();
    assert.equal(state, "reconnecting");
    assert.equal(info.attempt, 1);
    assert.equal(info.code, 1006);
    assert.ok(info.delayMs >= 0 && info.delayMs < 1000, `first delay ${info.delayMs}`);
    assert.equal(room.state, "idle");

    const ws2 = await reconnect(env);
    assert.deepEqual(ws2.frames("join"), [{ type: "join", room: "chat.lobby", since: 13, epoch: "e1", ref: 2 }]);
    ws2.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 20, recovered: true, ref: 2 });
    assert.equal(room.lastSeq, 13, "recovered: the replay moves lastSeq on");
    for (const seq of [13, 15, 20]) ws2.recv({ type: "msg", room: "chat.lobby", seq, ts: 1, data: null });
    assert.deepEqual(got, [11, 13, 15, 20]);
    assert.ok(env.states.some(([s]) => s === "connecting"));
  });

  test("a publish queued while down, and one in flight at the drop, are resent with the same id", async () => {
    const env = setup();
    const room = env.client.join("chat.lobby");
    const ws1 = await connect(env);
    const inflight = room.publish({ n: 1 });
    const [sent1] = ws1.frames("publish");
    assert.equal(typeof sent1.id, "string");
    assert.ok(sent1.id.length >= 16);
    assert.deepEqual(sent1.data, { n: 1 });
    ws1.drop(1006);
    const queued = room.publish("two", { id: "m-2" });
    const ws2 = await reconnect(env);
    const pubs = ws2.frames("publish");
    assert.deepEqual(pubs.map((p) => p.id), [sent1.id, "m-2"]);
    assert.deepEqual(pubs.map((p) => p.data), [{ n: 1 }, "two"]);
    assert.ok(pubs[0].ref > sent1.ref, "a new ref on the new connection");
    // the join goes before the publishes
    assert.equal(ws2.sent[0].type, "join");
    ws2.recv({ type: "ack", seq: 41, duplicate: true, ref: pubs[0].ref });
    ws2.recv({ type: "ack", seq: 42, ref: pubs[1].ref });
    assert.deepEqual(await inflight, { seq: 41, duplicate: true });
    assert.deepEqual(await queued, { seq: 42, duplicate: false });
  });

  test("publishes queue up to maxQueued while disconnected", async () => {
    const env = setup({ options: { maxQueued: 2 } });
    const a = env.client.publish("chat.lobby", 1);
    const b = env.client.publish("chat.lobby", 2);
    await assert.rejects(env.client.publish("chat.lobby", 3), (e) => e instanceof JetsockError && e.code === "queue_full");
    await assert.rejects(env.client.publish("chat.lobby", undefined), TypeError);
    await assert.rejects(env.client.publish("chat.lobby", "x".repeat(70000)), (e) => e.code === "too_large");
    const ws = await connect(env);
    const pubs = ws.frames("publish");
    assert.equal(pubs.length, 2);
    for (const p of pubs) ws.recv({ type: "ack", seq: p.data, ref: p.ref });
    assert.deepEqual(await Promise.all([a, b]), [
      { seq: 1, duplicate: false },
      { seq: 2, duplicate: false },
    ]);
  });

  test("rate_limited / unavailable retry with the same id; other errors reject", async () => {
    const env = setup();
    const ws = await connect(env);
    const p = env.client.publish("chat.lobby", "hi", { id: "k1" });
    const [first] = ws.frames("publish");
    ws.recv({ type: "error", code: "rate_limited", message: "slow down", ref: first.ref });
    assert.equal(ws.frames("publish").length, 1);
    advance(1000); // first retry waits 500-1000 ms
    const [, second] = ws.frames("publish");
    assert.equal(second.id, "k1");
    ws.recv({ type: "error", code: "unavailable", message: "nats", ref: second.ref });
    advance(2000);
    const third = ws.frames("publish")[2];
    assert.equal(third.id, "k1");
    ws.recv({ type: "ack", seq: 7, ref: third.ref });
    assert.deepEqual(await p, { seq: 7, duplicate: false });

    const q = env.client.publish("chat.secret", "no");
    ws.recv({ type: "error", code: "forbidden", message: "no right", ref: ws.frames("publish").at(-1).ref });
    await assert.rejects(q, (e) => e.code === "forbidden" && e.room === "chat.secret");
  });

  test("4503: closed, no reconnect, queued publishes rejected", async () => {
    const env = setup();
    const ws = await connect(env);
    ws.drop(1006);
    const p = env.client.publish("chat.lobby", 1);
    advance(1000);
    await flush();
    env.last().drop(4503, "forbidden");
    assert.deepEqual(env.lastState(), ["closed", { code: 4503, reason: "forbidden" }]);
    await assert.rejects(p, (e) => e.code === "closed" && e.closeCode === 4503);
    advance(120000, 100);
    await flush();
    assert.equal(env.sockets.length, 2);
    assert.equal(env.client._timers.size, 0);
  });

  test("1009 and 4500: terminal", async () => {
    for (const code of [1009, 4500]) {
      const env = setup();
      const ws = await connect(env);
      ws.drop(code, "x");
      assert.deepEqual(env.lastState(), ["closed", { code, reason: "x" }]);
    }
  });

  test("4001: a fresh token is fetched before the reconnect", async () => {
    const env = setup();
    const ws = await connect(env);
    ws.drop(4001, "token expired");
    const [state, info] = env.lastState();
    assert.equal(state, "reconnecting");
    assert.equal(info.code, 4001);
    await reconnect(env);
    assert.deepEqual(
      env.tokenCalls.map((c) => [c.reason, c.socketsBefore]),
      [
        ["connect", 0],
        ["expired", 1],
      ],
    );
    assert.deepEqual(env.last().protocols, ["jetsock.v1", "bearer.tok2"]);
  });

  test("4501: reconnect only when the token source gives a new token", async () => {
    let tok = "same";
    const calls = [];
    const env = setup({ token: async (ctx) => (calls.push(ctx.reason), tok) });
    let ws = await connect(env);
    tok = "fresh";
    ws.drop(4501, "unauthenticated");
    await flush();
    assert.equal(env.lastState()[0], "reconnecting");
    ws = await reconnect(env);
    assert.deepEqual(ws.protocols, ["jetsock.v1", "bearer.fresh"]);
    assert.deepEqual(calls, ["connect", "rejected"], "the fetched token is used, not fetched twice");
    ws.drop(4501, "unauthenticated");
    await flush();
    assert.deepEqual(env.lastState(), ["closed", { code: 4501, reason: "unauthenticated" }]);
    assert.equal(env.sockets.length, 2);
  });

  test("1012 and 1001: reconnect within 1 s", async () => {
    for (const code of [1012, 1001, 1012, 1001]) {
      const env = setup();
      const ws = await connect(env);
      ws.drop(code);
      const [state, info] = env.lastState();
      assert.equal(state, "reconnecting");
      assert.ok(info.delayMs >= 0 && info.delayMs < 1000, `${code}: ${info.delayMs}`);
      await reconnect(env);
    }
  });

  test("4029: at least 5 s", async () => {
    const env = setup();
    const ws = await connect(env);
    ws.drop(4029);
    const [, info] = env.lastState();
    assert.ok(info.delayMs >= 5000, `${info.delayMs}`);
    advance(4999);
    await flush();
    assert.equal(env.sockets.length, 1);
  });

  test("backoff grows per attempt and resets after a connection stays up 10 s", async () => {
    const env = setup({ options: { backoffBase: 100 } });
    let ws = await connect(env);
    ws.drop(1006);
    assert.equal(env.lastState()[1].attempt, 1);
    ws = await reconnect(env);
    ws.drop(1011);
    assert.equal(env.lastState()[1].attempt, 2);
    assert.ok(env.lastState()[1].delayMs < 200);
    ws = await reconnect(env);
    advance(10000);
    ws.drop(1013);
    assert.equal(env.lastState()[1].attempt, 1);
  });

  test("heartbeat: ping after heartbeat s of silence, dead 10 s later -> close 4000, reconnect as 1006", async () => {
    const env = setup();
    const ws = await connect(env, { heartbeat: 5 });
    advance(4999);
    assert.equal(ws.frames("ping").length, 0);
    advance(1);
    assert.equal(ws.frames("ping").length, 1);
    ws.recv({ type: "pong" }); // alive
    advance(4999);
    assert.equal(ws.frames("ping").length, 1);
    advance(1); // 5 s since the pong: ping again
    assert.equal(ws.frames("ping").length, 2);
    advance(9999);
    assert.equal(ws.closed, null);
    advance(1);
    assert.equal(ws.closed.code, 4000);
    const [state, info] = env.lastState();
    assert.equal(state, "reconnecting");
    assert.equal(info.code, 1006);
    ws.drop(1006); // the late close event of the abandoned socket changes nothing
    assert.equal(env.states.filter(([s]) => s === "reconnecting").length, 1);
  });

  test("traffic keeps the connection alive without pings", async () => {
    const env = setup();
    const ws = await connect(env, { heartbeat: 5 });
    for (let i = 0; i < 10; i++) {
      advance(4000);
      ws.recv({ type: "pong" });
    }
    assert.equal(ws.frames("ping").length, 0);
  });

  test("no welcome within connectTimeoutMs: abandoned and retried", async () => {
    const env = setup({ options: { connectTimeoutMs: 3000 } });
    await flush();
    env.last().open();
    advance(3000);
    assert.equal(env.last().closed.code, 4000);
    assert.equal(env.lastState()[0], "reconnecting");
  });

  test("join with since that is not recovered, and reset, call onReset", async () => {
    const env = setup();
    const resets = [];
    const room = env.client.join("chat.lobby", { since: 5, epoch: "e0", onReset: (i) => resets.push(i) });
    assert.equal(room.lastSeq, 5);
    const ws = await connect(env);
    assert.deepEqual(ws.frames("join"), [{ type: "join", room: "chat.lobby", since: 5, epoch: "e0", ref: 1 }]);
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 20, recovered: false, ref: 1 });
    assert.deepEqual(resets, [{ reason: "not_recovered", room: "chat.lobby", seq: 20, epoch: "e1" }]);
    assert.equal(room.lastSeq, 20);
    ws.recv({ type: "reset", room: "chat.lobby", epoch: "e2", seq: 3 });
    assert.deepEqual(resets[1], { reason: "reset", room: "chat.lobby", seq: 3, epoch: "e2" });
    assert.equal(room.lastSeq, 3);
    assert.equal(room.epoch, "e2");
  });

  test("expiring: refresh on the open connection; refresh error is reported", async () => {
    const env = setup();
    const ws = await connect(env);
    ws.recv({ type: "expiring", exp: 2e9 });
    await flush();
    const [r] = ws.frames("refresh");
    assert.equal(r.token, "tok2");
    assert.equal(env.tokenCalls[1].reason, "refresh");
    ws.recv({ type: "refreshed", exp: 2e9, ref: r.ref });
    assert.equal(env.sockets.length, 1);
    ws.recv({ type: "expiring", exp: 2e9 });
    await flush();
    ws.recv({ type: "error", code: "forbidden", message: "other sub", ref: ws.frames("refresh")[1].ref });
    assert.equal(env.errors.at(-1).code, "forbidden");
    assert.equal(env.client.state, "connected");
  });

  test("left with reason forbidden: room removed, error emitted", async () => {
    const env = setup();
    const room = env.client.join("chat.lobby");
    const ws = await connect(env);
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 0, recovered: false, ref: 1 });
    ws.recv({ type: "left", room: "chat.lobby", reason: "forbidden" });
    assert.equal(env.client.room("chat.lobby"), undefined);
    assert.equal(room.state, "left");
    assert.equal(env.errors.at(-1).code, "forbidden");
    assert.equal(env.errors.at(-1).room, "chat.lobby");
    ws.drop(1006);
    await reconnect(env);
    assert.deepEqual(env.last().frames("join"), []);
  });

  test("join errors: forbidden drops the room, unavailable retries", async () => {
    const env = setup();
    env.client.join("chat.a");
    const b = env.client.join("chat.b");
    const ws = await connect(env);
    ws.recv({ type: "error", code: "forbidden", message: "no", ref: 1 });
    assert.equal(env.client.room("chat.a"), undefined);
    assert.equal(env.errors.at(-1).room, "chat.a");
    ws.recv({ type: "error", code: "unavailable", message: "later", ref: 2 });
    assert.equal(b.state, "idle");
    advance(1000);
    assert.deepEqual(ws.frames("join").at(-1), { type: "join", room: "chat.b", ref: 3 });
  });

  test("leave sends leave; frames of an old membership are not delivered to a new one", async () => {
    const env = setup();
    const got = [];
    const r1 = env.client.join("chat.lobby");
    const ws = await connect(env);
    r1.leave();
    const r2 = env.client.join("chat.lobby", { onMessage: (m) => got.push(m.seq) });
    assert.deepEqual(
      ws.sent.map((f) => [f.type, f.ref]),
      [
        ["join", 1],
        ["leave", 2],
        ["join", 3],
      ],
    );
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 1, recovered: false, ref: 1 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 2, ts: 1, data: 0 });
    ws.recv({ type: "left", room: "chat.lobby", ref: 2 });
    assert.equal(r2.state, "joining");
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 2, recovered: false, ref: 3 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 3, ts: 1, data: 0 });
    assert.deepEqual(got, [3]);
    assert.equal(r1.state, "left");
    assert.deepEqual(env.errors, []);
  });

  test("an exception in onMessage is reported and does not stop delivery", async () => {
    const env = setup();
    const got = [];
    env.client.join("chat.lobby", {
      onMessage: (m) => {
        got.push(m.seq);
        if (m.seq === 1) throw new Error("app bug");
      },
    });
    const ws = await connect(env);
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 0, recovered: false, ref: 1 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 1, ts: 1, data: 0 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 2, ts: 1, data: 0 });
    assert.deepEqual(got, [1, 2]);
    assert.equal(env.errors[0].message, "app bug");
  });

  test("client.close(): 1000, no reconnect, queued publishes rejected, timers cleared", async () => {
    const env = setup();
    const ws = await connect(env);
    const p = env.client.publish("chat.lobby", 1);
    env.client.close();
    assert.deepEqual(ws.closed, { code: 1000, reason: "closed by client" });
    assert.deepEqual(env.lastState(), ["closed", { code: 1000, reason: "closed by client" }]);
    await assert.rejects(p, (e) => e.code === "closed");
    await assert.rejects(env.client.publish("chat.lobby", 2), (e) => e.code === "closed");
    assert.throws(() => env.client.join("chat.x"), (e) => e.code === "closed");
    assert.equal(env.client._timers.size, 0);
    advance(600000, 100);
    await flush();
    assert.equal(env.sockets.length, 1);
  });

  test("close() while reconnecting or during the token fetch", async () => {
    const env = setup();
    const ws = await connect(env);
    ws.drop(1006);
    env.client.close();
    advance(60000, 100);
    await flush();
    assert.equal(env.sockets.length, 1);

    let release;
    const slow = setup({ token: () => new Promise((r) => (release = r)) });
    await flush();
    slow.client.close();
    release("late");
    await flush();
    assert.equal(slow.sockets.length, 0);
    assert.equal(slow.lastState()[0], "closed");
  });

  test("persist: lastSeq and epoch survive a page reload through storage", async () => {
    const store = new Map();
    const storage = {
      getItem: (k) => (store.has(k) ? store.get(k) : null),
      setItem: (k, v) => store.set(k, String(v)),
      removeItem: (k) => store.delete(k),
    };
    const env = setup({ options: { persist: storage } });
    env.client.join("chat.lobby");
    const ws = await connect(env);
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 4, recovered: false, ref: 1 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 9, ts: 1, data: 0 });
    assert.deepEqual(JSON.parse(store.get("jetsock:ws://test/ws:chat.lobby")), { lastSeq: 9, epoch: "e1" });
    env.client.close();

    const again = setup({ options: { persist: storage } });
    const room = again.client.join("chat.lobby");
    assert.equal(room.lastSeq, 9);
    const ws2 = await connect(again);
    assert.deepEqual(ws2.frames("join"), [{ type: "join", room: "chat.lobby", since: 9, epoch: "e1", ref: 1 }]);
    room.leave();
    assert.equal(store.size, 0, "leave forgets the resume point");
  });

  describe("browser events", () => {
    let saved;
    beforeEach(() => {
      saved = Object.getOwnPropertyDescriptors(globalThis);
      const doc = new EventTarget();
      doc.visibilityState = "visible";
      for (const [k, v] of Object.entries({ window: new EventTarget(), document: doc, navigator: { onLine: true } })) {
        Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
      }
    });
    afterEach(() => {
      for (const k of ["window", "document", "navigator"]) {
        if (saved[k]) Object.defineProperty(globalThis, k, saved[k]);
        else delete globalThis[k];
      }
    });

    test("offline: wait for online without spending attempts, then reconnect at once", async () => {
      const env = setup();
      const ws = await connect(env);
      navigator.onLine = false;
      window.dispatchEvent(new Event("offline"));
      assert.equal(ws.frames("ping").length, 1, "liveness check when the network changes");
      ws.drop(1006);
      assert.deepEqual(env.lastState(), ["reconnecting", { attempt: 1, delayMs: null, code: 1006, offline: true }]);
      advance(120000, 100);
      await flush();
      assert.equal(env.sockets.length, 1);
      navigator.onLine = true;
      window.dispatchEvent(new Event("online"));
      await flush();
      assert.equal(env.sockets.length, 2);
      assert.equal(env.lastState()[0], "connecting");
    });

    test("online cancels a pending backoff timer; offline turns it into waiting", async () => {
      const env = setup({ options: { backoffBase: 60000, backoffCap: 60000 } });
      const ws = await connect(env);
      ws.drop(1006);
      assert.equal(typeof env.lastState()[1].delayMs, "number");
      navigator.onLine = false;
      window.dispatchEvent(new Event("offline"));
      assert.equal(env.lastState()[1].offline, true);
      assert.equal(env.lastState()[1].attempt, 1);
      navigator.onLine = true;
      window.dispatchEvent(new Event("online"));
      await flush();
      assert.equal(env.sockets.length, 2);
    });

    test("visible again: reconnect at once when down, ping when connected", async () => {
      const env = setup({ options: { backoffBase: 60000, backoffCap: 60000 } });
      let ws = await connect(env);
      const hide = (state) => {
        document.visibilityState = state;
        document.dispatchEvent(new Event("visibilitychange"));
      };
      hide("hidden");
      hide("visible");
      assert.equal(ws.frames("ping").length, 1);
      advance(10000); // nothing answered the ping
      assert.equal(ws.closed.code, 4000);
      hide("hidden");
      hide("visible");
      await flush();
      assert.equal(env.sockets.length, 2);
      ws = await connect(env);
      hide("visible"); // not hidden before: nothing
      assert.equal(ws.frames("ping").length, 0);
    });
  });
});
