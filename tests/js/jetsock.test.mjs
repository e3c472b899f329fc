// Unit and behavioural tests of clients/js/jetsock.js: `node --test tests/js/`.
// The client runs against a fake WebSocket driven by hand, with node's mock
// timers (setTimeout and Date) so reconnect delays and heartbeats are exact.

import { test, describe, beforeEach, afterEach, mock } from "node:test";
import assert from "node:assert/strict";
import Default, { Jetsock, JetsockError, RULES, Room, backoffDelay, closePolicy } from "../../clients/js/jetsock.js";
// Loaded here too, so that the client's dynamic import of it resolves without file I/O.
import StreamSocket, { streamUrl } from "../../clients/js/jetsock-stream.js";

const flush = () => new Promise((resolve) => setImmediate(resolve)); // setImmediate is not mocked

// The error a promise rejects with (the handler is attached at once: no unhandled rejection).
const caught = (promise) =>
  promise.then(
    (value) => assert.fail(`resolved with ${JSON.stringify(value)}`),
    (err) => err,
  );

// Node 20's mock.timers.tick(ms) moves Date to the end of the whole step before
// it runs the due callbacks, and skips timers those callbacks set. Advancing in
// small steps keeps Date.now() right inside timer callbacks.
const pick = (err) => [err.code, err.room];

function advance(ms, step = 1) {
  if (ms <= 0) return mock.timers.tick(0); // a 0 ms timer (a backoff draw of 0) is due now
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

  test("agrees with RULES for every code 1000..1015, 3000, 4000..4999", () => {
    const codes = [3000, undefined];
    for (let c = 1000; c <= 1015; c++) codes.push(c);
    for (let c = 4000; c <= 4999; c++) codes.push(c);
    const [low, high] = RULES.terminal;
    for (const code of codes) {
      const rule = RULES.closes[code];
      const action = rule ? rule[0] : code >= low && code <= high ? "stop" : "backoff";
      assert.deepEqual(
        closePolicy(code),
        {
          reconnect: action !== "stop",
          immediate: action === "at_once",
          minDelayMs: rule ? rule[2] : 0,
          refreshToken: rule ? rule[1] === 1 : false,
          requireNewToken: action === "if_new_token",
        },
        `code ${code}`,
      );
    }
    // The rules themselves: the actions PROTOCOL.md 9.11 names, codes in range.
    for (const [code, [action, fresh, min]] of Object.entries(RULES.closes)) {
      assert.ok(["stop", "backoff", "at_once", "if_new_token"].includes(action), code);
      assert.ok(fresh === 0 || fresh === 1, code);
      assert.ok(Number.isInteger(min) && min >= 0, code);
    }
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
    assert.deepEqual(env.lastState(), ["connected", { session: "s1", node: "n1", transport: "websocket" }]);
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
    assert.equal(room.state, "joining", "waiting for a connection is joining (was idle)");

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
    assert.equal(env.client._t.size, 0);
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
    assert.equal(b.state, "joining", "a join waiting for its retry is joining (was idle)");
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
    // The new join waits for the leave's `left` (the server would answer "already a member").
    assert.deepEqual(
      ws.sent.map((f) => [f.type, f.ref]),
      [
        ["join", 1],
        ["leave", 2],
      ],
    );
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 1, recovered: false, ref: 1 });
    ws.recv({ type: "msg", room: "chat.lobby", seq: 2, ts: 1, data: 0 });
    ws.recv({ type: "left", room: "chat.lobby", ref: 2 });
    assert.deepEqual(ws.sent.at(-1), { type: "join", room: "chat.lobby", ref: 3 });
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
    assert.equal(env.client._t.size, 0);
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

  test("defaults come from RULES: maxQueued 1000, connect timeout 10 s, no publish timeout", async () => {
    assert.equal(RULES.defaults.maxQueued, 1000);
    const env = setup();
    const pubs = [];
    for (let i = 0; i < 1000; i++) pubs.push(env.client.publish("chat.lobby", i));
    await assert.rejects(env.client.publish("chat.lobby", "one too many"), (e) => e.code === "queue_full");
    await flush();
    env.last().open();
    advance(9999);
    assert.equal(env.last().closed, null);
    advance(1);
    assert.equal(env.last().closed.code, 4000, "no welcome within 10 s");
    env.client.close();
    const results = await Promise.allSettled(pubs);
    assert.ok(results.every((r) => r.status === "rejected" && r.reason.code === "closed"));
  });

  describe("room lifecycle", () => {
    test("joining -> joined -> joining on a drop -> joined again -> left, with events", async () => {
      const env = setup();
      const room = env.client.join("chat.lobby");
      assert.ok(room instanceof Room);
      assert.equal(room.state, "joining");
      assert.equal(room.seq, null);
      assert.equal(room.recovered, null);
      assert.equal(room.error, null);
      const events = [];
      room.on("state", (state, info) => events.push(["state", state, info]));
      room.on("joined", (info) => events.push(["joined", info]));
      room.on("left", (info) => events.push(["left", info]));
      const ws1 = await connect(env);
      ws1.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 4, recovered: false, ref: 1 });
      const joined = { epoch: "e1", seq: 4, recovered: false, replayed: 0 }; // a 1.0 server: no replayed
      assert.deepEqual(events, [
        ["state", "joined", joined],
        ["joined", joined],
      ]);
      assert.equal(room.state, "joined");
      assert.equal(room.seq, 4);
      assert.equal(room.lastSeq, 4, "lastSeq is kept as an alias");
      assert.equal(room.recovered, false);
      ws1.recv({ type: "msg", room: "chat.lobby", seq: 6, ts: 1, data: "x" });
      ws1.drop(1006);
      assert.deepEqual(events.at(-1), ["state", "joining", undefined]);
      const ws2 = await reconnect(env);
      assert.deepEqual(ws2.frames("join"), [{ type: "join", room: "chat.lobby", since: 6, epoch: "e1", ref: 2 }]);
      ws2.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 9, recovered: true, ref: 2 });
      assert.equal(room.recovered, true);
      assert.equal(room.seq, 6, "recovered: the replay moves seq on");
      events.length = 0;
      const leaving = room.leave();
      assert.equal(room.state, "left");
      assert.equal(env.client.room("chat.lobby"), undefined);
      const left = { reason: "left", error: null };
      assert.deepEqual(events, [
        ["state", "left", left],
        ["left", left],
      ]);
      assert.deepEqual(ws2.frames("leave"), [{ type: "leave", room: "chat.lobby", ref: 3 }]);
      let done = false;
      leaving.then(() => (done = true));
      await flush();
      assert.equal(done, false, "leave() waits for the server's left");
      ws2.recv({ type: "left", room: "chat.lobby", ref: 3 });
      await flush();
      assert.equal(done, true);
      assert.equal(room.error, null, "left by the app: no error");
      assert.deepEqual(env.errors, []);
    });

    test("several message listeners, once, off, and JoinOptions callbacks as one more listener", async () => {
      const env = setup();
      const a = [];
      const b = [];
      const c = [];
      const viaOption = [];
      const room = env.client.join("chat.lobby", { onMessage: (m) => viaOption.push(m.seq) });
      const offA = room.on("message", (m) => a.push(m.seq));
      const fb = (m) => b.push(m.seq);
      room.on("message", fb);
      const offC = room.once("message", (m) => c.push(m.seq));
      const joinedOnce = [];
      room.once("joined", (info) => joinedOnce.push(info.seq));
      const ws = await connect(env);
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 0, recovered: false, ref: 1 });
      ws.recv({ type: "msg", room: "chat.lobby", seq: 1, ts: 1, data: 0 });
      offA();
      ws.recv({ type: "msg", room: "chat.lobby", seq: 2, ts: 1, data: 0 });
      room.off("message", fb);
      ws.recv({ type: "msg", room: "chat.lobby", seq: 3, ts: 1, data: 0 });
      assert.deepEqual(a, [1]);
      assert.deepEqual(b, [1, 2]);
      assert.deepEqual(c, [1], "once: called once");
      assert.deepEqual(viaOption, [1, 2, 3]);
      assert.equal(typeof offC, "function");
      ws.drop(1006);
      await reconnect(env);
      env.last().recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 3, recovered: true, ref: 2 });
      assert.deepEqual(joinedOnce, [0], "once on joined");

      // once() can be removed with off() before it fires, and client listeners work the same way.
      const never = () => assert.fail("removed");
      room.once("reset", never);
      room.off("reset", never);
      env.last().recv({ type: "reset", room: "chat.lobby", epoch: "e2", seq: 50 });
      const states = [];
      const s1 = (s) => states.push(["one", s]);
      env.client.on("state", s1);
      env.client.once("state", (s) => states.push(["once", s]));
      env.last().drop(1006);
      env.client.off("state", s1);
      await reconnect(env);
      assert.deepEqual(states, [
        ["one", "reconnecting"],
        ["once", "reconnecting"],
      ]);
    });

    test("a reset and a not-recovered resume emit reset before the messages after them", async () => {
      const env = setup();
      const seen = [];
      const room = env.client.join("chat.lobby", { since: 5, epoch: "e0" });
      room.on("reset", (info) => seen.push(["reset", info.reason, info.seq]));
      room.on("message", (m) => seen.push(["msg", m.seq]));
      room.on("joined", (info) => seen.push(["joined", info.recovered]));
      const ws = await connect(env);
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 20, recovered: false, ref: 1 });
      ws.recv({ type: "msg", room: "chat.lobby", seq: 21, ts: 1, data: 0 });
      ws.recv({ type: "reset", room: "chat.lobby", epoch: "e2", seq: 3 });
      ws.recv({ type: "msg", room: "chat.lobby", seq: 4, ts: 1, data: 0 });
      assert.deepEqual(seen, [
        ["joined", false],
        ["reset", "not_recovered", 20],
        ["msg", 21],
        ["reset", "reset", 3],
        ["msg", 4],
      ]);
    });

    test("room.ready(): at once when joined, on the next joined, after a retryable refusal", async () => {
      const env = setup();
      const room = env.client.join("chat.lobby");
      const first = room.ready();
      const ws = await connect(env);
      ws.recv({ type: "error", code: "unavailable", message: "later", ref: 1 });
      advance(1000);
      const [, retry] = ws.frames("join");
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 7, recovered: false, ref: retry.ref });
      assert.deepEqual(await first, { epoch: "e", seq: 7, recovered: false, replayed: 0 });
      assert.deepEqual(await room.ready(), { epoch: "e", seq: 7, recovered: false, replayed: 0 }, "at once when joined");
      ws.drop(1006);
      const again = room.ready();
      await reconnect(env);
      env.last().recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 9, recovered: true, replayed: 2, ref: 3 });
      assert.deepEqual(await again, { epoch: "e", seq: 9, recovered: true, replayed: 2 });
    });

    for (const code of ["forbidden", "invalid_room", "too_many_rooms", "bad_request"]) {
      test(`room.ready() rejects with the server's refusal: ${code}; the room is left with .error`, async () => {
        const env = setup();
        const room = env.client.join("chat.lobby");
        const ready = room.ready();
        const lefts = [];
        room.on("left", (info) => lefts.push(info));
        const ws = await connect(env);
        ws.recv({ type: "error", code, message: "no", ref: 1 });
        await assert.rejects(ready, (e) => e instanceof JetsockError && e.code === code && e.room === "chat.lobby");
        assert.equal(room.state, "left");
        assert.equal(room.error.code, code);
        assert.deepEqual(lefts, [{ reason: code, error: room.error }]);
        assert.equal(env.errors.at(-1), room.error, "the client-level error is still emitted");
        await assert.rejects(room.ready(), (e) => e.code === code, "a left room's ready() rejects at once");
        assert.equal(env.client.room("chat.lobby"), undefined);
        env.client.join("chat.lobby"); // the name is free again
      });
    }

    test("room.ready() rejects: left by the server, left by the app, client closed, timeout, aborted", async () => {
      const env = setup();
      const byServer = env.client.join("chat.a");
      const byApp = env.client.join("chat.b");
      const byClose = env.client.join("chat.c");
      const slow = env.client.join("chat.d");
      const ws = await connect(env);
      const serverReady = byServer.ready();
      ws.recv({ type: "joined", room: "chat.a", epoch: "e", seq: 0, recovered: false, ref: 1 });
      ws.recv({ type: "left", room: "chat.a", reason: "forbidden" });
      await serverReady; // it was joined before the left
      await assert.rejects(byServer.ready(), (e) => e.code === "forbidden" && e.room === "chat.a");
      assert.equal(byServer.error.code, "forbidden");

      const appReady = byApp.ready();
      byApp.leave();
      await assert.rejects(appReady, (e) => e.code === "left" && e.room === "chat.b");
      assert.equal(byApp.error, null);

      const timed = slow.ready({ timeoutMs: 500 });
      const controller = new AbortController();
      const aborted = slow.ready({ signal: controller.signal });
      controller.abort();
      await assert.rejects(aborted, (e) => e.code === "aborted" && e.room === "chat.d");
      await assert.rejects(slow.ready({ signal: AbortSignal.abort() }), (e) => e.code === "aborted");
      advance(500);
      await assert.rejects(timed, (e) => e.code === "timeout" && e.room === "chat.d");

      const closeReady = byClose.ready();
      const lefts = [];
      byClose.on("left", (info) => lefts.push(info));
      env.client.close();
      await assert.rejects(closeReady, (e) => e.code === "closed" && e.closeCode === 1000 && e.room === "chat.c");
      assert.equal(lefts[0].reason, "closed");
      assert.equal(lefts[0].error.code, "closed");
      assert.equal(byClose.state, "left");
      assert.equal(slow.state, "left");
    });

    test("join right after leave: the join waits for the left, or the end of the connection", async () => {
      const env = setup();
      const r1 = env.client.join("chat.lobby");
      let ws = await connect(env);
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 1, recovered: false, ref: 1 });
      r1.leave();
      const r2 = env.client.join("chat.lobby");
      assert.equal(env.client.room("chat.lobby"), r2);
      assert.deepEqual(ws.frames("join").length, 1);
      ws.drop(1006); // the leave is moot: the next connection joins r2 only
      ws = await reconnect(env);
      assert.deepEqual(ws.frames("join"), [{ type: "join", room: "chat.lobby", ref: 3 }]);
      assert.deepEqual(ws.frames("leave"), []);

      // A leave that gets no answer within requestTimeoutMs counts as done.
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 1, recovered: false, ref: 3 });
      const leaving = r2.leave();
      const r3 = env.client.join("chat.lobby");
      advance(RULES.defaults.requestTimeoutMs - 1);
      assert.equal(ws.frames("join").length, 1);
      advance(1);
      await leaving;
      assert.deepEqual(ws.frames("join").at(-1), { type: "join", room: "chat.lobby", ref: 5 });
      ws.recv({ type: "left", room: "chat.lobby", ref: 4 }); // late: changes nothing
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 1, recovered: false, ref: 5 });
      assert.equal(r3.state, "joined");

      // not_joined answers a leave as well.
      const leaving3 = r3.leave();
      ws.recv({ type: "error", code: "not_joined", message: "no", ref: 6 });
      await leaving3;
      assert.deepEqual(env.errors, []);
      // Not connected: leave() resolves at once and sends nothing.
      const r4 = env.client.join("chat.lobby");
      ws.drop(1006);
      await r4.leave();
      assert.equal(r4.state, "left");
    });
  });

  describe("connection control", () => {
    test("autoConnect false: idle until connect(); connect() is a no-op while connecting or connected", async () => {
      const env = setup({ options: { autoConnect: false } });
      await flush();
      assert.equal(env.client.state, "idle");
      assert.equal(env.sockets.length, 0);
      assert.deepEqual(env.tokenCalls, []);
      const room = env.client.join("chat.lobby");
      const ready = env.client.ready();
      env.client.connect();
      assert.equal(env.client.state, "connecting");
      env.client.connect();
      const ws = await connect(env);
      assert.deepEqual(await ready, { session: "s1", node: "n1", transport: "websocket" });
      env.client.connect();
      await flush();
      assert.equal(env.sockets.length, 1);
      assert.deepEqual(ws.frames("join"), [{ type: "join", room: "chat.lobby", ref: 1 }]);
      assert.equal(room.state, "joining");
      env.client.close();
      assert.throws(() => env.client.connect(), (e) => e instanceof JetsockError && e.code === "closed");
    });

    test("disconnect() keeps rooms, positions and publishes; connect() resumes them with since", async () => {
      const env = setup();
      const room = env.client.join("chat.lobby");
      const ws1 = await connect(env);
      ws1.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 3, recovered: false, ref: 1 });
      ws1.recv({ type: "msg", room: "chat.lobby", seq: 5, ts: 1, data: 0 });
      const inflight = room.publish("a", { id: "p1" });
      const roomStates = [];
      room.on("state", (s) => roomStates.push(s));
      env.client.disconnect();
      assert.deepEqual(ws1.closed, { code: 1000, reason: "disconnected by client" });
      assert.deepEqual(env.lastState(), ["disconnected", { code: 1000, reason: "disconnected by client" }]);
      assert.equal(room.state, "joining");
      assert.deepEqual(roomStates, ["joining"]);
      env.client.disconnect(); // again: nothing
      const queued = room.publish("b", { id: "p2" });
      advance(120000, 100);
      await flush();
      assert.equal(env.sockets.length, 1, "no reconnect on its own");
      assert.equal(env.client.state, "disconnected");
      ws1.drop(1000); // the late close event of our own close changes nothing
      assert.equal(env.client.state, "disconnected");

      env.client.connect();
      const ws2 = await connect(env);
      assert.deepEqual(ws2.frames("join"), [{ type: "join", room: "chat.lobby", since: 5, epoch: "e1", ref: 3 }]);
      const pubs = ws2.frames("publish");
      assert.deepEqual(pubs.map((p) => p.id), ["p1", "p2"]);
      ws2.recv({ type: "joined", room: "chat.lobby", epoch: "e1", seq: 5, recovered: true, ref: 3 });
      for (const [i, p] of pubs.entries()) ws2.recv({ type: "ack", seq: 10 + i, ref: p.ref });
      assert.deepEqual(await inflight, { seq: 10, duplicate: false });
      assert.deepEqual(await queued, { seq: 11, duplicate: false });
      assert.equal(room.state, "joined");
    });

    test("disconnect() cancels a pending reconnect and a connect in progress", async () => {
      const env = setup();
      const ws = await connect(env);
      ws.drop(1006);
      assert.equal(env.client.state, "reconnecting");
      env.client.disconnect();
      advance(60000, 100);
      await flush();
      assert.equal(env.sockets.length, 1);
      env.client.connect();
      await flush();
      assert.equal(env.sockets.length, 2);
      env.client.disconnect(); // before its welcome
      assert.equal(env.last().closed.code, 1000);
      env.last().open();
      env.last().recv({ type: "welcome", session: "s", node: "n", heartbeat: 25, exp: 2e9 });
      assert.equal(env.client.state, "disconnected");
    });

    test("client.ready(): at once when connected, else on the next connected; rejects on close, timeout, abort", async (t) => {
      t.mock.method(Math, "random", () => 0.5); // the reconnect waits 500 ms: not within the 100 ms below
      const env = setup();
      const first = env.client.ready();
      const ws = await connect(env);
      assert.deepEqual(await first, { session: "s1", node: "n1", transport: "websocket" });
      assert.deepEqual(await env.client.ready(), { session: "s1", node: "n1", transport: "websocket" });
      ws.drop(1006);
      const next = env.client.ready();
      const timed = env.client.ready({ timeoutMs: 100 });
      const controller = new AbortController();
      const aborted = env.client.ready({ signal: controller.signal });
      controller.abort();
      await assert.rejects(aborted, (e) => e.code === "aborted");
      await assert.rejects(env.client.ready({ signal: AbortSignal.abort() }), (e) => e.code === "aborted");
      advance(100);
      await assert.rejects(timed, (e) => e.code === "timeout");
      await reconnect(env, { session: "s2" });
      assert.deepEqual(await next, { session: "s2", node: "n1", transport: "websocket" });
      env.last().drop(1006);
      const onClose = env.client.ready();
      env.client.close();
      await assert.rejects(onClose, (e) => e.code === "closed" && e.closeCode === 1000);
      await assert.rejects(env.client.ready(), (e) => e.code === "closed" && e.closeCode === 1000);
      assert.equal(env.client._t.size, 0);
    });
  });

  describe("last and history", () => {
    const ROOM = "chat.lobby";
    const msg = (seq) => ({ type: "msg", room: ROOM, seq, ts: 1, data: { seq } });

    test("last goes with the first join, with every rejoin (beside since) and with a retried join", async () => {
      const env = setup();
      const got = [];
      const room = env.client.join(ROOM, { last: 50, onMessage: (m) => got.push(m.seq) });
      const ws1 = await connect(env);
      assert.deepEqual(ws1.frames("join"), [{ type: "join", room: ROOM, last: 50, ref: 1 }]);
      ws1.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 10, recovered: false, replayed: 3, ref: 1 });
      assert.equal(room.replayed, 3);
      assert.equal(room.seq, null, "no position until the first replayed message");
      for (const seq of [8, 9, 10, 11]) ws1.recv(msg(seq));
      assert.deepEqual(got, [8, 9, 10, 11]);
      assert.equal(room.seq, 11);
      ws1.drop(1006);
      const ws2 = await reconnect(env);
      const [rejoin] = ws2.frames("join");
      assert.deepEqual(rejoin, { type: "join", room: ROOM, since: 11, epoch: "e1", last: 50, ref: rejoin.ref });
      ws2.recv({ type: "error", code: "rate_limited", message: "slow", ref: rejoin.ref });
      advance(1000);
      const [, retry] = ws2.frames("join");
      assert.deepEqual(retry, { ...rejoin, ref: retry.ref }, "the retry is the same join");
      ws2.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 12, recovered: true, replayed: 1, ref: retry.ref });
      assert.equal(room.seq, 11, "recovered: the replay moves seq on");
      ws2.recv(msg(12));
      assert.deepEqual(got, [8, 9, 10, 11, 12]);
      assert.deepEqual(await room.ready(), { epoch: "e1", seq: 12, recovered: true, replayed: 1 });
      // Without last nothing changes on the wire.
      env.client.join("chat.other");
      assert.deepEqual(ws2.sent.at(-1), { type: "join", room: "chat.other", ref: retry.ref + 1 });
      for (const last of [0, -1, 1.5, "5"]) assert.throws(() => env.client.join("chat.bad", { last }), TypeError, `${last}`);
    });

    test("a failed resume with last: reset first, then the replayed messages in order, then live", async () => {
      const env = setup();
      const seen = [];
      const room = env.client.join(ROOM, { since: 5, epoch: "e0", last: 3 });
      room.on("joined", (info) => seen.push(["joined", info.recovered, info.replayed]));
      room.on("reset", (info) => seen.push(["reset", info.reason, info.seq, room.seq]));
      room.on("message", (m) => seen.push(["msg", m.seq]));
      const ws = await connect(env);
      assert.deepEqual(ws.frames("join"), [{ type: "join", room: ROOM, since: 5, epoch: "e0", last: 3, ref: 1 }]);
      ws.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 20, recovered: false, replayed: 3, ref: 1 });
      for (const seq of [18, 19, 19, 20, 21]) ws.recv(msg(seq));
      assert.deepEqual(seen, [
        ["joined", false, 3],
        ["reset", "not_recovered", 20, null],
        ["msg", 18],
        ["msg", 19],
        ["msg", 20],
        ["msg", 21],
      ]);
      assert.equal(room.seq, 21);

      // Another epoch: the newest messages may have seqs below the old position.
      seen.length = 0;
      ws.drop(1006);
      const ws2 = await reconnect(env);
      const [rejoin] = ws2.frames("join");
      assert.deepEqual([rejoin.since, rejoin.epoch, rejoin.last], [21, "e1", 3]);
      ws2.recv({ type: "joined", room: ROOM, epoch: "e2", seq: 2, recovered: false, replayed: 2, ref: rejoin.ref });
      for (const seq of [1, 2, 3]) ws2.recv(msg(seq));
      assert.deepEqual(seen, [
        ["joined", false, 2],
        ["reset", "not_recovered", 2, null],
        ["msg", 1],
        ["msg", 2],
        ["msg", 3],
      ]);

      // replayed 0 (an empty room, or a 1.0 server): as before, from the head.
      seen.length = 0;
      ws2.drop(1006);
      const ws3 = await reconnect(env);
      const [third] = ws3.frames("join");
      ws3.recv({ type: "joined", room: ROOM, epoch: "e3", seq: 7, recovered: false, ref: third.ref });
      assert.equal(room.replayed, 0);
      for (const seq of [6, 7, 8]) ws3.recv(msg(seq));
      assert.deepEqual(seen, [
        ["joined", false, 0],
        ["reset", "not_recovered", 7, 7],
        ["msg", 8],
      ]);
    });

    test("a drop in the middle of the newest messages resumes from the last one delivered, or joins anew", async () => {
      const env = setup();
      const got = [];
      const room = env.client.join(ROOM, { last: 10, onMessage: (m) => got.push(m.seq) });
      const ws1 = await connect(env);
      ws1.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 30, recovered: false, replayed: 10, ref: 1 });
      ws1.drop(1006); // before any of them: no position to resume from
      const ws2 = await reconnect(env);
      const [again] = ws2.frames("join");
      assert.deepEqual(again, { type: "join", room: ROOM, last: 10, ref: again.ref });
      ws2.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 30, recovered: false, replayed: 10, ref: again.ref });
      ws2.recv(msg(21));
      ws2.recv(msg(22));
      ws2.drop(1006);
      const ws3 = await reconnect(env);
      const [resume] = ws3.frames("join");
      assert.deepEqual([resume.since, resume.last], [22, 10]);
      ws3.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 30, recovered: true, replayed: 8, ref: resume.ref });
      for (let seq = 23; seq <= 30; seq++) ws3.recv(msg(seq));
      assert.deepEqual(got, Array.from({ length: 10 }, (_, i) => 21 + i));
    });

    test("history: sent once connected, answered by ref, messages as Message objects; room.history too", async () => {
      const env = setup();
      const page = env.client.history(ROOM, { before: 100, limit: 2 });
      const ws = await connect(env);
      const [h] = ws.frames("history");
      assert.deepEqual(h, { type: "history", room: ROOM, before: 100, limit: 2, ref: h.ref });
      ws.recv({ type: "pong" });
      const stored = [
        { room: ROOM, seq: 98, ts: 5, data: { n: 1 }, from: "bob" },
        { room: ROOM, seq: 99, ts: 6, data: "x", id: "i" },
      ];
      ws.recv({ type: "history", room: ROOM, epoch: "e1", messages: stored, more: true, ref: h.ref });
      assert.deepEqual(await page, {
        messages: stored.map((m) => ({ type: "msg", ...m })),
        more: true,
        epoch: "e1",
      });
      // A room need not be joined (nor the join answered) for its history.
      const room = env.client.join("chat.other");
      const first = room.history();
      const [, h2] = ws.frames("history");
      assert.deepEqual(h2, { type: "history", room: "chat.other", ref: h2.ref });
      ws.recv({ type: "history", room: "chat.other", epoch: "e1", messages: [], more: false, ref: h2.ref });
      assert.deepEqual(await first, { messages: [], more: false, epoch: "e1" });
      assert.equal(room.state, "joining");
    });

    test("history: rate_limited and unavailable are retried, a drop resends it, other errors reject", async () => {
      const env = setup();
      const page = env.client.history(ROOM, { limit: 5, timeoutMs: 0 });
      let ws = await connect(env);
      for (const code of ["rate_limited", "unavailable"]) {
        const sent = ws.frames("history").at(-1);
        ws.recv({ type: "error", code, message: code, ref: sent.ref });
        assert.equal(ws.frames("history").length, code == "rate_limited" ? 1 : 2, "not at once");
        advance(2000);
      }
      assert.equal(ws.frames("history").length, 3);
      ws.drop(1006); // in flight: sent again on the next connection
      ws = await reconnect(env);
      const [again] = ws.frames("history");
      assert.deepEqual(again, { type: "history", room: ROOM, limit: 5, ref: again.ref });
      ws.recv({ type: "history", room: ROOM, epoch: "e", messages: [], more: false, ref: again.ref });
      assert.equal((await page).more, false);

      for (const code of ["forbidden", "bad_request"]) {
        const refused = env.client.history(ROOM, { limit: 1000 });
        ws.recv({ type: "error", code, message: "no", ref: ws.frames("history").at(-1).ref });
        const err = await caught(refused);
        assert.ok(err instanceof JetsockError);
        assert.deepEqual([err.code, err.room], [code, ROOM]);
      }
      advance(5000);
      assert.equal(ws.frames("history").length, 3, "refusals are not retried");
      assert.equal((await caught(env.client.history("bad room"))).code, "invalid_room");
      assert.equal(ws.frames("history").length, 3);
    });

    test("history: times out after requestTimeoutMs by default, aborts, rejects on close; not counted in maxQueued", async () => {
      const env = setup({ options: { maxQueued: 1 } });
      const slow = env.client.history(ROOM);
      const controller = new AbortController();
      const aborted = env.client.history(ROOM, { signal: controller.signal });
      const ws = await connect(env);
      assert.equal(ws.frames("history").length, 2);
      const pub = env.client.publish(ROOM, 1, { id: "p" }); // histories do not fill the queue
      controller.abort();
      assert.equal((await caught(aborted)).code, "aborted");
      advance(RULES.defaults.requestTimeoutMs);
      const err = await caught(slow);
      assert.deepEqual([err.code, err.room], ["timeout", ROOM]);
      const late = env.client.history(ROOM);
      env.client.close();
      assert.deepEqual([(await caught(late)).code, (await caught(pub)).code], ["closed", "closed"]);
      assert.equal((await caught(env.client.history(ROOM))).code, "closed");
    });
  });

  describe("presence", () => {
    const ROOM = "chat.lobby";
    const PRESENCE = { features: ["history", "presence"] };
    const joined = (ws, ref) => ws.recv({ type: "joined", room: ROOM, epoch: "e1", seq: 1, recovered: false, ref });
    const members = (ws, who, list, extra = {}) =>
      ws.recv({
        type: "members",
        room: ROOM,
        count: list.length,
        connections: list.reduce((n, m) => n + m.connections, 0),
        members: list,
        truncated: false,
        ref: who.ref,
        ...extra,
      });
    const alice = { sub: "alice", info: { name: "Alice" }, connections: 2 };
    const bob = { sub: "bob", connections: 1 };
    const snapshot = (room) => Object.fromEntries(room.members);

    test("a who after joined (welcome.features has presence): the answer fills members and is told as an event", async () => {
      const env = setup();
      const events = [];
      const room = env.client.join(ROOM, { onPresence: (e) => events.push(e) });
      const ws = await connect(env, PRESENCE);
      assert.deepEqual(env.client.features, ["history", "presence"]);
      assert.deepEqual(ws.frames("who"), [], "not before joined");
      joined(ws, 1);
      const [who] = ws.frames("who");
      assert.deepEqual(who, { type: "who", room: ROOM, ref: who.ref });
      members(ws, who, [alice, bob]);
      assert.deepEqual(snapshot(room), { alice, bob });
      assert.deepEqual(events, [{ joined: [alice, bob], left: [] }]);

      // Events: the first connection of carol joined, bob's last left; alice joined again
      // (as the server may say after a batch) keeps her count.
      const carol = { sub: "carol", info: { name: "Carol" } };
      ws.recv({ type: "presence", room: ROOM, joined: [carol, { sub: "alice", info: { name: "Alice B." } }], left: [{ sub: "bob" }] });
      assert.deepEqual(snapshot(room), {
        alice: { sub: "alice", info: { name: "Alice B." }, connections: 2 },
        carol: { ...carol, connections: 1 },
      });
      assert.deepEqual(events[1], { joined: [carol, { sub: "alice", info: { name: "Alice B." } }], left: [{ sub: "bob" }] });
      ws.recv({ type: "presence", room: "chat.other", joined: [bob], left: [] }); // not ours: nothing
      assert.equal(events.length, 2);
      assert.equal(ws.frames("who").length, 1, "events ask nothing");
      assert.deepEqual(env.errors, []);

      // A node without presence: no who at all.
      const plain = setup();
      const other = plain.client.join(ROOM);
      const ws2 = await connect(plain);
      assert.deepEqual(plain.client.features, []);
      joined(ws2, 1);
      assert.deepEqual(ws2.frames("who"), []);
      assert.equal(other.members.size, 0);
    });

    test("every rejoin resyncs with a who: the difference is told, members stay the same Map", async () => {
      const env = setup();
      const events = [];
      const room = env.client.join(ROOM);
      room.on("presence", (e) => events.push(e));
      const map = room.members;
      const ws1 = await connect(env, PRESENCE);
      joined(ws1, 1);
      members(ws1, ws1.frames("who")[0], [alice, bob]);
      ws1.drop(1006);
      assert.equal(room.state, "joining");
      assert.deepEqual(snapshot(room), { alice, bob }, "kept while rejoining");
      const ws2 = await reconnect(env, PRESENCE);
      assert.deepEqual(ws2.frames("who"), [], "asked after the rejoin's joined");
      const [join] = ws2.frames("join");
      joined(ws2, join.ref);
      const [who] = ws2.frames("who");
      const dave = { sub: "dave", connections: 3 };
      const alone = { ...alice, connections: 1 };
      members(ws2, who, [alone, dave]); // bob left and dave joined while we were away
      assert.equal(room.members, map);
      assert.deepEqual(snapshot(room), { alice: alone, dave });
      assert.deepEqual(events.at(-1), { joined: [dave], left: [{ sub: "bob" }] });
      // A who of our own with only counts changed: an event with nothing in it.
      const asked = room.presence();
      const [, mine] = ws2.frames("who");
      members(ws2, mine, [alice, dave]);
      assert.deepEqual(await asked, { room: ROOM, count: 2, connections: 5, members: [alice, dave], truncated: false });
      assert.deepEqual(events.at(-1), { joined: [], left: [] });
      assert.equal(room.members.get("alice").connections, 2);
    });

    test("forbidden or bad_request stop the automatic who of that room, quietly; room.presence() still asks", async () => {
      const env = setup();
      const room = env.client.join(ROOM);
      const open = env.client.join("chat.open");
      const ws1 = await connect(env, PRESENCE);
      joined(ws1, 1);
      ws1.recv({ type: "joined", room: "chat.open", epoch: "e1", seq: 1, recovered: false, ref: 2 });
      const [w1, w2] = ws1.frames("who");
      assert.deepEqual([w1.room, w2.room], [ROOM, "chat.open"]);
      ws1.recv({ type: "error", code: "forbidden", message: "no right", ref: w1.ref });
      ws1.recv({ type: "error", code: "internal", message: "oops", ref: w2.ref }); // not a refusal of presence
      await flush();
      assert.deepEqual(env.errors, [], "nothing reported");
      assert.equal(room.state, "joined");

      ws1.drop(1006);
      const ws2 = await reconnect(env, PRESENCE);
      for (const join of ws2.frames("join")) ws2.recv({ type: "joined", room: join.room, epoch: "e1", seq: 1, recovered: true, ref: join.ref });
      assert.deepEqual(ws2.frames("who").map((w) => w.room), ["chat.open"], "the forbidden room asks no more");
      ws2.recv({ type: "error", code: "bad_request", message: "presence is not kept", ref: ws2.frames("who")[0].ref });
      await flush();

      // Asked for by the application: sent, and the refusal rejects.
      const refused = room.presence();
      const [, who] = ws2.frames("who");
      assert.equal(who.room, ROOM);
      ws2.recv({ type: "error", code: "forbidden", message: "no right", ref: who.ref });
      const err = await caught(refused);
      assert.deepEqual([err instanceof JetsockError, err.code, err.room], [true, "forbidden", ROOM]);

      ws2.drop(1006);
      const ws3 = await reconnect(env, PRESENCE);
      for (const join of ws3.frames("join")) ws3.recv({ type: "joined", room: join.room, epoch: "e1", seq: 1, recovered: true, ref: join.ref });
      assert.deepEqual(ws3.frames("who"), [], "bad_request stopped chat.open too");
      assert.deepEqual(env.errors, []);
      assert.equal(open.members.size, 0);
    });

    test("presence(): queued while down, retried on rate_limited / unavailable, resent after a drop; errors reject", async () => {
      const env = setup();
      const answer = env.client.presence(ROOM, { timeoutMs: 0 }); // a room not joined: who needs no membership
      const ws1 = await connect(env);
      const [first] = ws1.frames("who");
      assert.deepEqual(first, { type: "who", room: ROOM, ref: first.ref });
      ws1.recv({ type: "error", code: "rate_limited", message: "slow down", ref: first.ref });
      assert.equal(ws1.frames("who").length, 1, "not at once");
      advance(1000);
      const [, second] = ws1.frames("who");
      ws1.recv({ type: "error", code: "unavailable", message: "later", ref: second.ref });
      ws1.drop(1006);
      const ws2 = await reconnect(env);
      const [again] = ws2.frames("who");
      assert.equal(again.room, ROOM);
      members(ws2, again, [bob], { truncated: true });
      assert.deepEqual(await answer, { room: ROOM, count: 1, connections: 1, members: [bob], truncated: true });

      const slow = env.client.presence(ROOM);
      advance(RULES.defaults.requestTimeoutMs);
      assert.deepEqual(pick(await caught(slow)), ["timeout", ROOM]);
      assert.equal((await caught(env.client.presence("bad room"))).code, "invalid_room");
      const aborted = env.client.presence(ROOM, { signal: AbortSignal.abort() });
      assert.equal((await caught(aborted)).code, "aborted");
      const late = env.client.presence(ROOM);
      env.client.close();
      assert.equal((await caught(late)).code, "closed");
      assert.deepEqual(env.errors, []);
    });

    test("members are cleared when the room leaves; an answer after that changes nothing", async () => {
      const env = setup();
      const room = env.client.join(ROOM);
      const ws = await connect(env, PRESENCE);
      joined(ws, 1);
      members(ws, ws.frames("who")[0], [alice]);
      const asked = room.presence();
      const [, who] = ws.frames("who");
      const leaving = room.leave();
      assert.equal(room.members.size, 0);
      const events = [];
      room.on("presence", (e) => events.push(e));
      members(ws, who, [alice, bob]);
      assert.equal((await asked).count, 2, "the promise still resolves");
      assert.equal(room.members.size, 0);
      ws.recv({ type: "presence", room: ROOM, joined: [bob], left: [] });
      assert.deepEqual(events, []);
      ws.recv({ type: "left", room: ROOM, ref: ws.frames("leave")[0].ref });
      await leaving;
    });
  });

  describe("publishes", () => {
    test("timeout: rejects, is not sent again; a retry timer is cancelled", async () => {
      const env = setup({ options: { publishTimeoutMs: 3000 } });
      const queued = env.client.publish("chat.lobby", 1, { id: "q" }); // default timeout from the options
      const own = env.client.publish("chat.lobby", 2, { id: "own", timeoutMs: 0 }); // 0: none
      advance(3000);
      await assert.rejects(queued, (e) => e.code === "timeout" && e.room === "chat.lobby" && e.id === "q");
      const ws = await connect(env);
      assert.deepEqual(ws.frames("publish").map((p) => p.id), ["own"]);
      ws.recv({ type: "ack", seq: 1, ref: ws.frames("publish")[0].ref });
      await own;

      const retried = env.client.publish("chat.lobby", 3, { id: "r", timeoutMs: 400 });
      ws.recv({ type: "error", code: "rate_limited", message: "slow", ref: ws.frames("publish").at(-1).ref });
      advance(400); // the first retry waits 500-1000 ms
      await assert.rejects(retried, (e) => e.code === "timeout" && e.id === "r");
      advance(30000, 100);
      assert.deepEqual(ws.frames("publish").map((p) => p.id), ["own", "r"], "no resend after the timeout");
    });

    test("abort before and during: rejects with aborted (room, id), not sent or not sent again", async () => {
      const env = setup();
      const ws = await connect(env);
      const before = env.client.publish("chat.lobby", 1, { id: "a0", signal: AbortSignal.abort() });
      await assert.rejects(before, (e) => e instanceof JetsockError && e.code === "aborted" && e.id === "a0" && e.room === "chat.lobby");
      assert.deepEqual(ws.frames("publish"), [], "an aborted signal: never sent");
      const controller = new AbortController();
      const during = env.client.publish("chat.lobby", 2, { id: "a1", signal: controller.signal });
      assert.equal(ws.frames("publish").length, 1);
      controller.abort();
      await assert.rejects(during, (e) => e.code === "aborted" && e.id === "a1");
      // The copy already sent may still be stored; its late ack changes nothing.
      ws.recv({ type: "ack", seq: 5, ref: ws.frames("publish")[0].ref });
      ws.drop(1006);
      const ws2 = await reconnect(env);
      assert.deepEqual(ws2.frames("publish"), [], "an aborted publish is not resent after a reconnect");
    });

    test("maxQueued counts publishes in flight too; an ack frees a slot", async () => {
      const env = setup({ options: { maxQueued: 2 } });
      const ws = await connect(env);
      const a = env.client.publish("chat.lobby", 1);
      const b = env.client.publish("chat.lobby", 2);
      assert.equal(ws.frames("publish").length, 2);
      await assert.rejects(env.client.publish("chat.lobby", 3, { id: "x" }), (e) => e.code === "queue_full" && e.id === "x" && e.room === "chat.lobby");
      ws.recv({ type: "ack", seq: 1, ref: ws.frames("publish")[0].ref });
      await a;
      const c = env.client.publish("chat.lobby", 4);
      assert.equal(ws.frames("publish").length, 3);
      for (const p of ws.frames("publish").slice(1)) ws.recv({ type: "ack", seq: p.data, ref: p.ref });
      assert.deepEqual(await Promise.all([b, c]), [
        { seq: 2, duplicate: false },
        { seq: 4, duplicate: false },
      ]);
    });

    test("every refusal carries room and id; invalid room and closed too", async () => {
      const env = setup();
      await assert.rejects(env.client.publish("bad room", 1, { id: "i" }), (e) => e.code === "invalid_room" && e.id === "i" && e.room === "bad room");
      await assert.rejects(env.client.publish("chat.x", 1n), TypeError);
      const ws = await connect(env);
      const p = env.client.publish("chat.x", 1, { id: "f" });
      ws.recv({ type: "error", code: "too_large", message: "big", ref: ws.frames("publish")[0].ref });
      await assert.rejects(p, (e) => e.code === "too_large" && e.id === "f" && e.room === "chat.x");
      const open = env.client.publish("chat.x", 2, { id: "o" });
      env.client.close();
      await assert.rejects(open, (e) => e.code === "closed" && e.closeCode === 1000 && e.id === "o" && e.room === "chat.x");
      await assert.rejects(env.client.publish("chat.x", 3, { id: "c" }), (e) => e.code === "closed" && e.closeCode === 1000 && e.id === "c");
    });
  });

  describe("tokens", () => {
    // The promises a logged-out client must reject, each with its handler attached at once.
    function pendingOf(env, room) {
      return {
        publish: caught(env.client.publish("chat.lobby", 1)),
        ready: caught(env.client.ready()),
        roomReady: room ? caught(room.ready()) : null,
      };
    }

    async function expectLoggedOut(env, { publish, ready, roomReady }) {
      assert.deepEqual(env.lastState(), ["closed", { code: 4501, reason: "logged out", loggedOut: true }]);
      const p = await publish;
      assert.ok(p.code === "logged_out" && p.closeCode === 4501 && p.room === "chat.lobby" && typeof p.id === "string", p);
      const r = await ready;
      assert.ok(r.code === "logged_out" && r.closeCode === 4501, r);
      if (roomReady) {
        const rr = await roomReady;
        assert.ok(rr.code === "logged_out" && rr.room === "chat.lobby" && rr.closeCode === 4501, rr);
      }
      await assert.rejects(env.client.publish("chat.lobby", 1), (e) => e.code === "logged_out");
      assert.equal(env.client._t.size, 0);
    }

    test("logged out (null) at the first connect: closed at once, no socket", async () => {
      const env = setup({ token: async () => null });
      const room = env.client.join("chat.lobby");
      const pending = pendingOf(env, room);
      await flush();
      assert.equal(env.sockets.length, 0);
      await expectLoggedOut(env, pending);
      assert.equal(room.state, "left");
    });

    test("logged out after 4001", async () => {
      let answer = "t1";
      const reasons = [];
      const env = setup({ token: (ctx) => (reasons.push(ctx.reason), answer) });
      const room = env.client.join("chat.lobby");
      const ws = await connect(env);
      answer = null;
      ws.drop(4001, "token expired");
      const pending = pendingOf(env, room);
      advance(env.lastState()[1].delayMs);
      await flush();
      assert.deepEqual(reasons, ["connect", "expired"]);
      assert.equal(env.sockets.length, 1);
      await expectLoggedOut(env, pending);
    });

    test("logged out on expiring: the open connection is closed with 1000", async () => {
      let answer = "t1";
      const env = setup({ token: async () => answer });
      const room = env.client.join("chat.lobby");
      const ws = await connect(env);
      ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 0, recovered: false, ref: 1 });
      const publish = caught(env.client.publish("chat.lobby", 1));
      answer = null;
      ws.recv({ type: "expiring", exp: 2e9 });
      await flush();
      assert.equal(ws.closed.code, 1000);
      assert.deepEqual(ws.frames("refresh"), []);
      assert.equal(room.state, "left");
      assert.equal(room.error.code, "logged_out");
      await expectLoggedOut(env, { publish, ready: caught(env.client.ready()), roomReady: caught(room.ready()) });
    });

    test("logged out after 4501", async () => {
      let answer = "t1";
      const env = setup({ token: async () => answer });
      const ws = await connect(env);
      answer = null;
      ws.drop(4501, "unauthenticated");
      await flush();
      assert.deepEqual(env.lastState(), ["closed", { code: 4501, reason: "logged out", loggedOut: true }]);
    });

    test("a source that throws or gives a non-string is retried with backoff", async () => {
      const answers = [() => Promise.reject(new Error("auth down")), () => 42, () => "", () => "good"];
      const env = setup({ token: () => answers.shift()() });
      await flush();
      assert.equal(env.errors[0].message, "auth down");
      assert.equal(env.lastState()[0], "reconnecting");
      for (let i = 0; i < 2; i++) {
        advance(env.lastState()[1].delayMs);
        await flush();
        assert.equal(env.errors.at(-1).code, "bad_token");
        assert.equal(env.lastState()[0], "reconnecting");
      }
      assert.equal(env.sockets.length, 0);
      advance(env.lastState()[1].delayMs);
      await flush();
      assert.deepEqual(env.last().protocols, ["jetsock.v1", "bearer.good"]);
    });

    test("after 4501 a throwing source is retried with backoff, and the refused token still stops", async () => {
      const answers = ["t1", new Error("auth down"), "t1", "t1"];
      const env = setup({
        token: async () => {
          const a = answers.shift();
          if (a instanceof Error) throw a;
          return a;
        },
      });
      const ws = await connect(env);
      ws.drop(4501, "unauthenticated");
      await flush();
      assert.equal(env.errors.at(-1).message, "auth down");
      assert.equal(env.lastState()[0], "reconnecting");
      const ws2 = await reconnect(env);
      assert.deepEqual(ws2.protocols, ["jetsock.v1", "bearer.t1"]);
      ws2.drop(4501, "unauthenticated");
      await flush();
      assert.deepEqual(env.lastState(), ["closed", { code: 4501, reason: "unauthenticated" }]);
    });
  });

  test("1001 and 1012 do not grow the attempt count", async () => {
    const env = setup();
    let ws = await connect(env);
    ws.drop(1006);
    ws = await reconnect(env);
    for (const code of [1012, 1001, 1012]) {
      ws.drop(code);
      assert.equal(env.lastState()[1].attempt, 2, `${code}`);
      ws = await reconnect(env);
    }
  });

  test("debug: the given function sees state changes, frames in and out, close decisions", async () => {
    const logs = [];
    const env = setup({ options: { debug: (...args) => logs.push(args) } });
    env.client.join("chat.lobby");
    const ws = await connect(env);
    ws.recv({ type: "joined", room: "chat.lobby", epoch: "e", seq: 0, recovered: false, ref: 1 });
    ws.drop(4029, "slow down");
    assert.deepEqual(logs[0], ["state", "connecting", undefined]);
    assert.deepEqual(logs[1], ["in", "welcome", undefined, undefined]);
    assert.deepEqual(logs[2], ["out", "join", 1, "chat.lobby"]);
    assert.deepEqual(logs[3], ["state", "connected", { session: "s1", node: "n1", transport: "websocket" }]);
    assert.deepEqual(logs[4], ["in", "joined", 1, "chat.lobby"]);
    assert.deepEqual(logs[5], ["closed", 4029, "slow down", closePolicy(4029)]);
    assert.equal(logs[6][0], "state");
    assert.equal(logs[6][1], "reconnecting");

    const printed = [];
    const debug = mock.method(console, "debug", (...args) => printed.push(args));
    try {
      const env2 = setup({ options: { debug: true } });
      await flush();
      assert.deepEqual(printed[0], ["jetsock", "state", "connecting", undefined]);
      env2.client.close();
    } finally {
      debug.mock.restore();
    }
  });

  describe("injected event targets", () => {
    test("networkEvents: offline waits without spending attempts, online reconnects at once", async () => {
      const net = new EventTarget();
      const env = setup({ options: { networkEvents: net, visibilityEvents: null } });
      const ws = await connect(env);
      net.dispatchEvent(new Event("offline"));
      assert.equal(ws.frames("ping").length, 1, "liveness check when the network changes");
      ws.drop(1006);
      assert.deepEqual(env.lastState(), ["reconnecting", { attempt: 1, delayMs: null, code: 1006, offline: true }]);
      advance(120000, 100);
      await flush();
      assert.equal(env.sockets.length, 1);
      net.dispatchEvent(new Event("online"));
      await flush();
      assert.equal(env.sockets.length, 2);
      env.client.close();
      net.dispatchEvent(new Event("offline")); // listeners removed at close
      net.dispatchEvent(new Event("online"));
      await flush();
      assert.equal(env.sockets.length, 2);
    });

    test("visibilityEvents: visible again pings when connected, reconnects at once when down", async () => {
      const doc = new EventTarget();
      doc.visibilityState = "visible";
      const flip = (state) => {
        doc.visibilityState = state;
        doc.dispatchEvent(new Event("visibilitychange"));
      };
      const env = setup({ options: { visibilityEvents: doc, networkEvents: null, backoffBase: 60000, backoffCap: 60000 } });
      let ws = await connect(env);
      flip("hidden");
      flip("visible");
      assert.equal(ws.frames("ping").length, 1);
      ws.drop(1006);
      flip("hidden");
      flip("visible");
      await flush();
      assert.equal(env.sockets.length, 2, "no 60 s backoff wait");
      ws = await connect(env);
      flip("visible"); // not hidden before: nothing
      assert.equal(ws.frames("ping").length, 0);
    });

    test("null targets: no listeners even where window and document exist", async () => {
      const win = new EventTarget();
      const doc = new EventTarget();
      const saved = { window: globalThis.window, document: globalThis.document };
      Object.assign(globalThis, { window: win, document: doc });
      try {
        const env = setup({ options: { networkEvents: null, visibilityEvents: null } });
        const ws = await connect(env);
        win.dispatchEvent(new Event("offline"));
        doc.visibilityState = "hidden";
        doc.dispatchEvent(new Event("visibilitychange"));
        doc.visibilityState = "visible";
        doc.dispatchEvent(new Event("visibilitychange"));
        assert.equal(ws.frames("ping").length, 0);
        const defaults = setup();
        const ws2 = await connect(defaults);
        win.dispatchEvent(new Event("offline"));
        assert.equal(ws2.frames("ping").length, 1, "undefined: the global window is used");
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete globalThis[k];
          else globalThis[k] = v;
        }
      }
    });
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

  // --- the HTTP stream transport (clients/js/jetsock-stream.js), against a fake fetch() ---

  describe("stream transport", () => {
    const ROOM = "chat.lobby";
    const bytes = (text) => new TextEncoder().encode(text);
    const event = (frame) => `data: ${JSON.stringify(frame)}\n\n`;
    const msg = (seq, data = { seq }) => ({ type: "msg", room: ROOM, seq, ts: 1, data });

    // Promises, a dynamic import and stream reads settle over several turns.
    async function settle() {
      for (let i = 0; i < 10; i++) await flush();
    }

    // fetch() as the server's two endpoints would answer it, by hand: each request waits for
    // respond(status, headers) or, for POST /v1/stream, open(), which holds the answer open
    // as an event stream the test writes to.
    function fakeFetch() {
      const requests = [];
      const fetch = (url, init) =>
        new Promise((resolve, reject) => {
          const req = { url, init, auth: init.headers.Authorization, frames: JSON.parse(init.body), aborted: false };
          let body = null;
          init.signal.addEventListener("abort", () => {
            req.aborted = true;
            const err = new DOMException("aborted", "AbortError");
            quiet(() => body?.error(err));
            reject(err);
          });
          req.respond = (status, headers = {}) => resolve(new Response(status == 204 ? null : "{}", { status, headers }));
          req.open = (headers = { "content-type": "text/event-stream; charset=utf-8" }) => {
            resolve(new Response(new ReadableStream({ start: (c) => (body = c) }), { status: 200, headers }));
            return {
              write: (data) => body.enqueue(typeof data == "string" ? bytes(data) : data),
              send: (frame) => body.enqueue(bytes(event(frame))),
              end: () => body.close(),
            };
          };
          requests.push(req);
        });
      const opens = () => requests.filter((r) => r.url.endsWith("/v1/stream"));
      const posts = () => requests.filter((r) => !r.url.endsWith("/v1/stream"));
      return { fetch, requests, opens, posts };
    }
    const quiet = (fn) => {
      try {
        fn();
      } catch {}
    };

    function streamSetup(options = {}, token) {
      const server = fakeFetch();
      const env = setup({ token, options: { fetch: server.fetch, transports: ["stream"], ...options } });
      return { ...env, server };
    }

    // Let the attempt post its opening request; answer it with an event stream and a welcome.
    async function streamConnect(env, welcome = {}) {
      await settle();
      const open = env.server.opens().at(-1);
      assert.ok(open && !open.aborted, "an opening request waits");
      const s = open.open();
      s.send({ type: "welcome", session: "s1", node: "n1", heartbeat: 25, exp: 2e9, ...welcome });
      await settle();
      return { open, s };
    }

    test("streamUrl: beside the WebSocket URL, ws -> http, wss -> https, /ws -> /v1/stream", () => {
      assert.equal(streamUrl("ws://localhost:8080/ws"), "http://localhost:8080/v1/stream");
      assert.equal(streamUrl("wss://example.com/ws"), "https://example.com/v1/stream");
      assert.equal(streamUrl("wss://example.com/realtime/ws?x=1#y"), "https://example.com/realtime/v1/stream");
      assert.equal(streamUrl("ws://example.com"), "http://example.com/v1/stream");
      assert.equal(typeof StreamSocket, "function");
    });

    test("two WebSocket failures before any welcome: the stream, its opening request carrying the joins", async (t) => {
      t.mock.method(Math, "random", () => 0);
      const server = fakeFetch();
      const env = setup({ options: { fetch: server.fetch } });
      env.server = server;
      const room = env.client.join(ROOM, { since: 7, epoch: "e1", last: 5 });
      await flush();
      assert.equal(env.client.transport, "websocket");
      env.last().drop(1006); // the upgrade was refused: no welcome
      advance(0);
      await flush();
      assert.equal(env.sockets.length, 2);
      env.last().open(); // opened, and then silent: no welcome within connectTimeoutMs
      advance(10000);
      assert.equal(env.last().closed.code, 4000);
      advance(0);
      await settle();
      assert.equal(env.sockets.length, 2, "no third WebSocket");
      assert.equal(env.client.transport, "stream");
      const [open] = server.opens();
      assert.equal(open.url, "http://test/ws".replace("/ws", "/v1/stream"));
      assert.equal(open.init.method, "POST");
      assert.equal(open.auth, "Bearer tok3");
      assert.equal(open.init.headers["Content-Type"], "application/json");
      const [join] = open.frames;
      assert.deepEqual(open.frames, [{ type: "join", room: ROOM, ref: join.ref, since: 7, epoch: "e1", last: 5 }]);
      const s = open.open();
      s.send({ type: "welcome", session: "node1.abc", node: "n1", heartbeat: 25, exp: 2e9 });
      await settle();
      assert.deepEqual(env.lastState(), ["connected", { session: "node1.abc", node: "n1", transport: "stream" }]);
      assert.equal(env.client.session, "node1.abc");
      const got = [];
      room.on("message", (m) => got.push(m.seq));
      s.send({ type: "joined", room: ROOM, ref: join.ref, epoch: "e1", seq: 9, recovered: true, replayed: 2 });
      s.send(msg(8));
      s.send(msg(9));
      s.send(msg(9)); // the server never doubles; the client drops it anyway
      await settle();
      assert.equal(room.state, "joined");
      assert.deepEqual(got, [8, 9]);
      assert.equal(server.posts().length, 0, "the join went with the opening request: nothing to post");
      assert.deepEqual(env.errors, []);
    });

    test("events across chunk boundaries: cut lines, cut UTF-8, CRLF, comments, several events per chunk", async () => {
      const env = streamSetup();
      const room = env.client.join(ROOM);
      const { open, s } = await streamConnect(env);
      const got = [];
      room.on("message", (m) => got.push([m.seq, m.data]));
      s.send({ type: "joined", room: ROOM, ref: open.frames[0].ref, epoch: "e1", seq: 0, recovered: false });
      const text = event(msg(1, { text: "héllo 日本" })) + ": keepalive\n\n" + event(msg(2)).replace(/\n/g, "\r\n");
      const all = bytes(text + event(msg(3)) + event(msg(4)));
      // One byte at a time through the first events (so inside "é" and "日"), the rest in one chunk.
      const cut = bytes(text).byteLength;
      for (let i = 0; i < cut; i++) s.write(all.slice(i, i + 1));
      s.write(all.slice(cut));
      await settle();
      assert.deepEqual(got, [[1, { text: "héllo 日本" }], [2, { seq: 2 }], [3, { seq: 3 }], [4, { seq: 4 }]]);
      // An event whose data spans two data: lines is their join by a newline (a JSON with a newline in it).
      s.write('data: {"type":"msg","room":"chat.lobby",\ndata: "seq":5,"ts":1,"data":5}\n\n');
      await settle();
      assert.deepEqual(got.at(-1), [5, 5]);
      assert.deepEqual(env.errors, []);
    });

    test("posts: one at a time, in order, the frames queued meanwhile batched into one array", async () => {
      const env = streamSetup();
      env.client.join(ROOM);
      const { s } = await streamConnect(env);
      const first = env.client.publish(ROOM, { n: 1 }, { id: "a" });
      await settle();
      const [p1] = env.server.posts();
      assert.equal(p1.url, "http://test/v1/stream/s1");
      assert.equal(p1.auth, "Bearer tok1");
      assert.deepEqual(p1.frames.map((f) => [f.type, f.id]), [["publish", "a"]]);
      const second = env.client.publish(ROOM, { n: 2 }, { id: "b" });
      const third = env.client.publish(ROOM, { n: 3 }, { id: "c" });
      const page = env.client.history(ROOM, { limit: 2 });
      await settle();
      assert.equal(env.server.posts().length, 1, "the next post waits for the answer to this one");
      p1.respond(204);
      await settle();
      const [, p2] = env.server.posts();
      assert.deepEqual(p2.frames.map((f) => f.id ?? f.type), ["b", "c", "history"]);
      p2.respond(204);
      await settle();
      assert.equal(env.server.posts().length, 2);
      // Replies come on the stream, by ref.
      const refs = [...p1.frames, ...p2.frames].map((f) => f.ref);
      s.send({ type: "ack", ref: refs[0], seq: 1 });
      s.send({ type: "ack", ref: refs[1], seq: 2 });
      s.send({ type: "ack", ref: refs[2], seq: 3, duplicate: true });
      s.send({ type: "history", ref: refs[3], room: ROOM, epoch: "e1", more: false, messages: [{ room: ROOM, seq: 1, ts: 1, data: 1 }] });
      assert.deepEqual(await first, { seq: 1, duplicate: false });
      assert.deepEqual(await second, { seq: 2, duplicate: false });
      assert.deepEqual(await third, { seq: 3, duplicate: true });
      assert.deepEqual((await page).messages.map((m) => m.seq), [1]);
    });

    test("404 for a post: the connection is lost (1006); the client reconnects and resumes with since and the same ids", async (t) => {
      t.mock.method(Math, "random", () => 0);
      const env = streamSetup();
      const room = env.client.join(ROOM);
      const { open, s } = await streamConnect(env);
      s.send({ type: "joined", room: ROOM, ref: open.frames[0].ref, epoch: "e1", seq: 4, recovered: false });
      s.send(msg(5));
      await settle();
      const published = env.client.publish(ROOM, { n: 1 }, { id: "once" });
      await settle();
      const [post] = env.server.posts();
      post.respond(404);
      await settle();
      assert.equal(env.lastState()[0], "reconnecting");
      assert.equal(env.lastState()[1].code, 1006);
      assert.equal(room.state, "joining");
      assert.ok(open.aborted, "the old stream is given up");
      advance(env.lastState()[1].delayMs);
      const again = await streamConnect(env, { session: "s2" });
      assert.equal(env.server.opens().length, 2);
      assert.deepEqual(again.open.frames.map((f) => [f.type, f.since, f.epoch]), [["join", 5, "e1"]]);
      await settle();
      const resent = env.server.posts().at(-1);
      assert.equal(resent.url, "http://test/v1/stream/s2");
      assert.deepEqual(resent.frames.map((f) => [f.type, f.id]), [["publish", "once"]]);
      resent.respond(204);
      again.s.send({ type: "ack", ref: resent.frames[0].ref, seq: 6, duplicate: true });
      assert.deepEqual(await published, { seq: 6, duplicate: true });
      assert.equal(env.sockets.length, 0, "pinned to the stream: no WebSocket");
    });

    test("503 for a post: the same frames again after Retry-After, and nothing after them before", async () => {
      const env = streamSetup();
      await streamConnect(env);
      env.client.publish(ROOM, { n: 1 }, { id: "a" }).catch(() => {});
      await settle();
      const [p1] = env.server.posts();
      p1.respond(503, { "Retry-After": "2" });
      await settle();
      env.client.publish(ROOM, { n: 2 }, { id: "b" }).catch(() => {});
      await settle();
      advance(1999);
      await settle();
      assert.equal(env.server.posts().length, 1, "not before Retry-After");
      advance(1);
      await settle();
      const [, p2] = env.server.posts();
      assert.equal(p2.init.body, p1.init.body, "the same frames, byte for byte");
      p2.respond(204);
      await settle();
      assert.deepEqual(env.server.posts()[2].frames.map((f) => f.id), ["b"]);
      assert.equal(env.client.state, "connected");
    });

    test("413: the batch split in two; for a single frame, closed with 1009 as a WebSocket would be", async () => {
      const env = streamSetup();
      await streamConnect(env);
      env.client.publish(ROOM, 1, { id: "a" }).catch(() => {});
      await settle();
      env.client.publish(ROOM, 2, { id: "b" }).catch(() => {});
      env.client.publish(ROOM, 3, { id: "c" }).catch(() => {});
      env.server.posts()[0].respond(204);
      await settle();
      env.server.posts()[1].respond(413);
      await settle();
      const halves = env.server.posts().slice(2);
      assert.deepEqual(halves.map((p) => p.frames.map((f) => f.id)), [["b"]]);
      halves[0].respond(204);
      await settle();
      const last = env.server.posts()[3];
      assert.deepEqual(last.frames.map((f) => f.id), ["c"]);
      last.respond(413);
      await settle();
      assert.deepEqual(env.lastState(), ["closed", { code: 1009, reason: "a frame over the server's limit" }]);
    });

    test("the close event goes through the close policy: 1012 at once, 4001 for a fresh token, 4501 stops", async (t) => {
      t.mock.method(Math, "random", () => 0.5);
      const env = streamSetup();
      let { s } = await streamConnect(env);
      // The edge writes it with Python's json.dumps: spaces after the separators.
      s.write('data: {"type": "close", "code": 1012, "reason": "draining"}\n\n');
      await settle();
      assert.deepEqual(env.lastState(), ["reconnecting", { attempt: 1, delayMs: 500, code: 1012 }]);
      advance(500);
      ({ s } = await streamConnect(env));
      s.send({ type: "close", code: 4001, reason: "token expired" });
      await settle();
      assert.equal(env.lastState()[1].code, 4001);
      advance(env.lastState()[1].delayMs);
      await streamConnect(env);
      assert.deepEqual(env.tokenCalls.map((c) => c.reason), ["connect", "connect", "expired"]);

      const fixed = streamSetup({}, "the-one-token");
      const second = await streamConnect(fixed);
      second.s.send({ type: "close", code: 4501, reason: "unauthenticated" });
      await settle();
      assert.deepEqual(fixed.lastState(), ["closed", { code: 4501, reason: "unauthenticated" }]);
      // The body ending without a close event, or a refused opening request, is a lost connection.
      const third = streamSetup();
      (await streamConnect(third)).s.end();
      await settle();
      assert.equal(third.lastState()[1].code, 1006);
      advance(third.lastState()[1].delayMs);
      await settle();
      third.server.opens().at(-1).respond(502);
      await settle();
      assert.deepEqual([third.lastState()[0], third.lastState()[1].code], ["reconnecting", 1006]);
    });

    test("a post every heartbeat: a ping when nothing else went, though frames keep arriving", async () => {
      const env = streamSetup();
      const room = env.client.join(ROOM);
      const { open, s } = await streamConnect(env, { heartbeat: 2 });
      s.send({ type: "joined", room: ROOM, ref: open.frames[0].ref, epoch: "e1", seq: 0, recovered: false });
      let seq = 0;
      for (let ms = 0; ms < 6000; ms += 500) {
        s.send(msg(++seq)); // busy downstream: the client's own idle ping never fires
        await settle();
        advance(500);
        await settle();
        for (const p of env.server.posts()) if (!p.done) (p.done = true), p.respond(204);
      }
      const pings = env.server.posts().filter((p) => p.frames.every((f) => f.type == "ping"));
      assert.equal(pings.length, 3, "one at 2, 4 and 6 s");
      assert.deepEqual(pings[0].frames, [{ type: "ping" }]);
      assert.equal(room.seq, seq);
      assert.equal(env.client.state, "connected");
    });

    test("posts carry the refreshed token once the server took it", async () => {
      const env = streamSetup();
      const { s } = await streamConnect(env);
      s.send({ type: "expiring", exp: 2e9 });
      await settle();
      const [refresh] = env.server.posts();
      assert.deepEqual(refresh.frames.map((f) => [f.type, f.token]), [["refresh", "tok2"]]);
      assert.equal(refresh.auth, "Bearer tok1", "the old token is still good");
      refresh.respond(204);
      s.send({ type: "refreshed", ref: refresh.frames[0].ref, exp: 2e9 + 3600 });
      await settle();
      env.client.publish(ROOM, 1, { id: "x" }).catch(() => {});
      await settle();
      assert.equal(env.server.posts()[1].auth, "Bearer tok2");
    });

    test("pinning: transports ['websocket'] never falls back; ['stream'] never makes a WebSocket", async (t) => {
      t.mock.method(Math, "random", () => 0);
      const server = fakeFetch();
      const env = setup({ options: { fetch: server.fetch, transports: ["websocket"] } });
      for (let i = 0; i < 4; i++) {
        await flush();
        env.last().drop(1006);
        advance(0);
      }
      await settle();
      assert.equal(env.sockets.length, 5);
      assert.equal(server.requests.length, 0);
      assert.equal(env.client.transport, "websocket");

      const only = streamSetup();
      await streamConnect(only);
      assert.equal(only.sockets.length, 0);
      assert.equal(only.client.transport, "stream");
      assert.equal(only.lastState()[1].transport, "stream");
    });

    test("a WebSocket that cannot be made: the stream at the next attempt, or closed when it is the only transport", async (t) => {
      t.mock.method(Math, "random", () => 0);
      class Broken {
        constructor() {
          throw new SyntaxError("bad url");
        }
      }
      const server = fakeFetch();
      const env = setup({ options: { fetch: server.fetch, WebSocket: Broken } });
      env.server = server;
      await flush();
      assert.equal(env.errors[0].message, "bad url");
      assert.equal(env.lastState()[0], "reconnecting");
      advance(0);
      await streamConnect(env);
      assert.equal(env.client.state, "connected");
      assert.equal(env.client.transport, "stream");

      const alone = setup({ options: { WebSocket: Broken, transports: ["websocket"] } });
      await flush();
      assert.deepEqual(alone.lastState(), ["closed", { code: 1006, reason: "bad url" }]);
    });

    test("WebSocket again at the first reconnect 5 minutes after the fallback", async (t) => {
      t.mock.method(Math, "random", () => 0);
      const server = fakeFetch();
      const env = setup({ options: { fetch: server.fetch } });
      env.server = server;
      for (let i = 0; i < 2; i++) {
        await flush();
        env.last().drop(1006);
        advance(0);
      }
      let { s } = await streamConnect(env, { heartbeat: 1000 });
      s.end(); // lost within the 5 minutes: the stream again
      await settle();
      advance(0);
      ({ s } = await streamConnect(env, { heartbeat: 1000 }));
      assert.equal(env.sockets.length, 2);
      advance(301000, 1000);
      s.end();
      await settle();
      advance(0);
      await settle();
      assert.equal(env.sockets.length, 3, "a WebSocket again");
      assert.equal(env.client.transport, "websocket");
      await connect(env);
      assert.equal(env.lastState()[1].transport, "websocket");
      assert.equal(server.opens().length, 2);
    });

    test("close(), disconnect() and a leave before the welcome", async () => {
      const env = streamSetup();
      const room = env.client.join(ROOM);
      await settle();
      const [open] = env.server.opens();
      room.leave(); // its join went with the opening request: the leave follows it
      const { s } = await streamConnect(env);
      const [post] = env.server.posts();
      assert.deepEqual(post.frames.map((f) => [f.type, f.room]), [["leave", ROOM]]);
      env.client.disconnect();
      assert.ok(open.aborted && post.aborted, "the stream and the post in flight are aborted");
      assert.equal(env.client.state, "disconnected");
      quiet(() => s.send(msg(1))); // too late: nothing happens
      await settle();
      assert.deepEqual(env.errors, []);
    });
  });
});
