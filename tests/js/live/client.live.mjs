// The JS client against a real edge on a real nats-server, with the `ws` package as its
// WebSocket. Run by tests/clients/test_js_live.py, which starts the edge and sets:
//   JETSOCK_TEST_URL     ws://host:port/ws
//   JETSOCK_TEST_HTTP    http://host:port
//   JETSOCK_TEST_SECRET  the edge's HS256 secret (tokens are minted here with node:crypto)
//   JETSOCK_TEST_MAX_ROOMS  the edge's max_rooms_per_connection (default 100)
//   JETSOCK_TEST_MAX_REPLAY the edge's max_replay (a resume missing more is not recovered)
//   JETSOCK_TEST_PRESENCE_ROOMS the edge's presence_rooms (rooms named live.presence.*)
// The file name does not match node's test patterns, so `node --test tests/js/` skips it;
// run it by name: node --test tests/js/live/client.live.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Jetsock, JetsockError } from "../../../clients/js/jetsock.js";

const WebSocket = createRequire(fileURLToPath(new URL("../../../clients/js/", import.meta.url)))("ws");
const URL_WS = need("JETSOCK_TEST_URL");
const URL_HTTP = need("JETSOCK_TEST_HTTP");
const SECRET = need("JETSOCK_TEST_SECRET");
const MAX_ROOMS = Number(process.env.JETSOCK_TEST_MAX_ROOMS ?? 100);
const TIMEOUT = { timeout: 20000 };

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/clients/test_js_live.py`);
  return value;
}

const b64url = (value) => Buffer.from(typeof value == "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT as the edge expects it (PROTOCOL.md section 3). */
function mint({ sub = "alice", ttl = 3600, join = [">"], publish = [">"], presence, info, admin } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const rooms = presence ? { join, publish, presence } : { join, publish };
  const claims = { sub, iat: now, exp: now + ttl, rooms, ...(info ? { info } : {}), ...(admin ? { admin: true } : {}) };
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

// Each test has rooms of its own: they all share one stream.
const roomName = (what) => `live.${what}.${randomUUID().slice(0, 8)}`;

const clients = [];
function client(options = {}) {
  const c = new Jetsock(URL_WS, { WebSocket, token: mint(), networkEvents: null, visibilityEvents: null, ...options });
  c.errors = [];
  c.on("error", (err) => c.errors.push(err));
  clients.push(c);
  return c;
}

test.afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

/** The next `n` messages of a room, in order. */
function messages(room, n, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => (off(), reject(new Error(`${got.length} of ${n} messages in ${room.name}`))), timeoutMs);
    const off = room.on("message", (msg) => {
      got.push(msg);
      if (got.length === n) clearTimeout(timer), off(), resolve(got);
    });
  });
}

/** The state the client reaches next (or is in). */
function reach(c, state, timeoutMs = 10000) {
  if (c.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`still ${c.state}, not ${state}`))), timeoutMs);
    const off = c.on("state", (s, info) => s === state && (clearTimeout(timer), off(), resolve(info)));
  });
}

async function httpPublish(room, data, token = mint({ sub: "backend" })) {
  const response = await fetch(`${URL_HTTP}/v1/rooms/${room}/messages`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(data),
  });
  assert.equal(response.status, 201, await response.clone().text());
  return (await response.json()).seq;
}

test("lifecycle: joining -> joined, publish and ack, several listeners, once, leave", TIMEOUT, async () => {
  const c = client();
  const name = roomName("lifecycle");
  const room = c.join(name);
  const states = [room.state];
  room.on("state", (s) => states.push(s));
  const joined = await room.ready();
  assert.equal(typeof joined.epoch, "string");
  assert.ok(Number.isInteger(joined.seq));
  assert.equal(joined.recovered, false);
  assert.deepEqual(states, ["joining", "joined"]);
  assert.equal(c.state, "connected");
  assert.equal(typeof c.session, "string");

  const first = messages(room, 2);
  const second = messages(room, 2);
  const onces = [];
  room.once("message", (msg) => onces.push(msg.seq));
  const a = await room.publish({ text: "one" }, { id: "id-1" });
  const b = await room.publish({ text: "two" });
  assert.ok(b.seq > a.seq && a.seq > joined.seq);
  assert.equal(a.duplicate, false);
  const got = await first;
  assert.deepEqual((await second).map((m) => m.seq), [a.seq, b.seq], "every listener gets every message");
  assert.deepEqual(got.map((m) => [m.seq, m.data, m.from]), [
    [a.seq, { text: "one" }, "alice"],
    [b.seq, { text: "two" }, "alice"],
  ]);
  assert.equal(got[0].id, "id-1");
  assert.deepEqual(onces, [a.seq]);
  assert.equal(room.seq, b.seq);

  const again = await room.publish({ text: "one" }, { id: "id-1" });
  assert.deepEqual(again, { seq: a.seq, duplicate: true }, "the same id is stored once");

  await room.leave();
  assert.equal(room.state, "left");
  assert.deepEqual(states, ["joining", "joined", "left"]);
  // The name can be joined again at once: the client waited for the server's left.
  const back = c.join(name);
  assert.equal((await back.ready()).recovered, false);
  assert.deepEqual(c.errors, []);
});

test("join right after leave, without waiting: the second join is not refused", TIMEOUT, async () => {
  const c = client();
  const name = roomName("rejoin");
  const room = c.join(name);
  await room.ready();
  room.leave(); // not awaited
  const again = c.join(name);
  await again.ready();
  assert.equal(again.state, "joined");
  assert.deepEqual(c.errors, []);
});

test("ready() rejects with forbidden; the room is left with .error and the client reports it", TIMEOUT, async () => {
  const c = client({ token: mint({ join: ["open.>"], publish: ["open.>"] }) });
  const room = c.join(roomName("secret"));
  const lefts = [];
  room.on("left", (info) => lefts.push(info));
  await assert.rejects(room.ready(), (e) => e instanceof JetsockError && e.code === "forbidden" && e.room === room.name);
  assert.equal(room.state, "left");
  assert.equal(room.error.code, "forbidden");
  assert.equal(lefts[0].reason, "forbidden");
  assert.equal(c.errors[0].code, "forbidden");
  await assert.rejects(c.publish(roomName("secret"), 1), (e) => e.code === "forbidden");
  const open = c.join(`open.${randomUUID().slice(0, 8)}`); // the token may join this one
  await open.ready();
});

test("ready() rejects with too_many_rooms past the server's limit; invalid names never leave the client", TIMEOUT, async () => {
  const c = client();
  const rooms = Array.from({ length: MAX_ROOMS + 1 }, (_, i) => c.join(roomName(`many${i}`)));
  const results = await Promise.allSettled(rooms.map((r) => r.ready()));
  const refused = results.filter((r) => r.status === "rejected");
  assert.equal(refused.length, 1);
  assert.equal(refused[0].reason.code, "too_many_rooms");
  assert.equal(rooms.at(-1).error.code, "too_many_rooms");
  assert.throws(() => c.join("not a room"), (e) => e.code === "invalid_room");
  await assert.rejects(c.publish("a..b", 1), (e) => e.code === "invalid_room");
});

test("disconnect, publishes over HTTP meanwhile, connect: replayed with recovered true, in order, once", TIMEOUT, async () => {
  const c = client({ autoConnect: false });
  assert.equal(c.state, "idle");
  const room = c.join(roomName("resume"));
  c.connect();
  await c.ready({ timeoutMs: 10000 });
  await room.ready();
  const own = messages(room, 1);
  const { seq } = await room.publish({ n: 0 });
  await own;
  assert.equal(room.seq, seq);

  c.disconnect();
  await reach(c, "disconnected");
  assert.equal(room.state, "joining");
  const sent = [];
  for (let n = 1; n <= 3; n++) sent.push(await httpPublish(room.name, { n }));
  const queued = room.publish({ n: 4 }, { id: "while-down" }); // held until connect()
  const replay = messages(room, 4);
  const joined = new Promise((resolve) => room.once("joined", resolve));
  c.connect();
  assert.equal((await joined).recovered, true);
  assert.equal(room.recovered, true);
  const got = await replay;
  const acked = await queued;
  assert.deepEqual(got.map((m) => m.seq), [...sent, acked.seq]);
  assert.deepEqual(got.map((m) => m.data.n), [1, 2, 3, 4]);
  assert.deepEqual(got.slice(0, 3).map((m) => m.from), ["backend", "backend", "backend"]);
  assert.equal(room.seq, acked.seq);
  assert.deepEqual(c.errors, []);
});

test("publish timeout and abort: rejected, and never stored", TIMEOUT, async () => {
  const watcher = client();
  const c = client({ autoConnect: false });
  const name = roomName("timeout");
  const watched = watcher.join(name);
  await watched.ready();
  const seen = [];
  watched.on("message", (m) => seen.push(m.data));

  await assert.rejects(c.publish(name, "pre-aborted", { signal: AbortSignal.abort() }), (e) => e.code === "aborted" && e.room === name);
  const timedOut = c.publish(name, "timed out", { timeoutMs: 200, id: "t1" });
  const controller = new AbortController();
  const aborted = c.publish(name, "aborted", { signal: controller.signal, id: "a1" });
  await assert.rejects(timedOut, (e) => e.code === "timeout" && e.id === "t1" && e.room === name);
  controller.abort();
  await assert.rejects(aborted, (e) => e.code === "aborted" && e.id === "a1");

  c.connect();
  const marker = messages(watched, 1);
  await c.publish(name, "marker");
  await marker;
  assert.deepEqual(seen, ["marker"], "what timed out or was aborted before sending was never sent");

  // A long timeout that the ack beats changes nothing.
  assert.equal((await c.publish(name, "quick", { timeoutMs: 5000 })).duplicate, false);
});

test("a token source that says logged out (null) closes the client", TIMEOUT, async () => {
  const none = client({ token: () => null });
  const closed = reach(none, "closed");
  await assert.rejects(none.ready(), (e) => e.code === "logged_out" && e.closeCode === 4501);
  assert.deepEqual(await closed, { code: 4501, reason: "logged out", loggedOut: true });

  // On `expiring` (a token that expires within refresh_before): the source is asked for a
  // refresh, answers null, and the open connection closes.
  const reasons = [];
  const c = client({ token: ({ reason }) => (reasons.push(reason), reason === "refresh" ? null : mint({ ttl: 20 })) });
  const room = c.join(roomName("logout"));
  // `expiring` comes right after welcome: the room may or may not be joined by then.
  const ready = room.ready().then(() => null, (err) => err);
  const info = await reach(c, "closed");
  const err = await ready;
  assert.ok(err === null || (err.code === "logged_out" && err.closeCode === 4501), err);
  assert.deepEqual(info, { code: 4501, reason: "logged out", loggedOut: true });
  assert.deepEqual(reasons, ["connect", "refresh"]);
  assert.equal(room.state, "left");
  assert.equal(room.error.code, "logged_out");
  await assert.rejects(c.publish(room.name, 1), (e) => e.code === "logged_out" && e.closeCode === 4501);
});

// --- history (PROTOCOL.md 9.12): join with last, history pages, a failed resume ---

/** Publish `n` messages {n: 0..n-1} over HTTP, one after the other; their seqs. */
async function httpPublishMany(room, n, from = 0) {
  const seqs = [];
  for (let i = from; i < from + n; i++) seqs.push(await httpPublish(room, { n: i }));
  return seqs;
}

test("join with last: the room's newest messages, in order, then live ones", TIMEOUT, async () => {
  const name = roomName("last");
  const stored = await httpPublishMany(name, 8);
  const c = client();
  const room = c.join(name, { last: 5 });
  const seen = [];
  room.on("reset", (info) => seen.push(["reset", info.reason]));
  const newest = messages(room, 5);
  const joined = await room.ready();
  assert.deepEqual([joined.recovered, joined.replayed, joined.seq], [false, 5, stored.at(-1)]);
  assert.equal(room.replayed, 5);
  const got = await newest;
  assert.deepEqual(got.map((m) => m.seq), stored.slice(-5));
  assert.deepEqual(got.map((m) => m.data.n), [3, 4, 5, 6, 7]);
  const live = messages(room, 1);
  const { seq } = await room.publish({ n: 8 });
  assert.deepEqual((await live).map((m) => m.seq), [seq]);
  assert.deepEqual(seen, [], "a join without a position has nothing to reset");

  // A room with fewer messages than last: all of them; an empty one: none.
  const few = roomName("few");
  const two = await httpPublishMany(few, 2);
  const small = c.join(few, { last: 50 });
  const both = messages(small, 2);
  assert.equal((await small.ready()).replayed, 2);
  assert.deepEqual((await both).map((m) => m.seq), two);
  const empty = c.join(roomName("empty"), { last: 50 });
  assert.deepEqual(await empty.ready().then((j) => [j.replayed, j.recovered]), [0, false]);
  assert.deepEqual(c.errors, []);
});

test("history pages back with before until more is false; errors reject", TIMEOUT, async () => {
  const name = roomName("history");
  const stored = await httpPublishMany(name, 25);
  const c = client();
  const pages = [];
  let before;
  for (;;) {
    const page = await c.history(name, { before, limit: 10 });
    assert.ok(page.messages.length > 0);
    assert.equal(typeof page.epoch, "string");
    pages.unshift(page.messages);
    if (!page.more) break;
    before = page.messages[0].seq;
  }
  assert.deepEqual(pages.map((p) => p.length), [5, 10, 10]);
  const all = pages.flat();
  assert.deepEqual(all.map((m) => m.seq), stored, "every stored message once, in order");
  assert.deepEqual(all.map((m) => m.data.n), Array.from({ length: 25 }, (_, i) => i));
  assert.deepEqual([all[0].type, all[0].room, all[0].from, typeof all[0].ts], ["msg", name, "backend", "number"]);

  // Room.history, joined or not: the same pages.
  const room = c.join(name);
  const head = await room.history({ limit: 3 });
  assert.deepEqual(head.messages.map((m) => m.seq), stored.slice(-3));
  assert.equal(head.more, true);
  await room.ready();
  const middle = await room.history({ before: stored[10], limit: 2 });
  assert.deepEqual(middle.messages.map((m) => m.seq), stored.slice(8, 10));
  const nothing = await c.history(roomName("none"));
  assert.deepEqual([nothing.messages, nothing.more], [[], false]);

  await assert.rejects(c.history(name, { limit: 1000 }), (e) => e instanceof JetsockError && e.code === "bad_request" && e.room === name);
  await assert.rejects(c.history(name, { before: 0 }), (e) => e.code === "bad_request");
  const outsider = client({ token: mint({ join: ["open.>"], publish: [] }) });
  await assert.rejects(outsider.history(name), (e) => e.code === "forbidden" && e.room === name);
  await assert.rejects(c.history("not a room"), (e) => e.code === "invalid_room");
});

test("a resume that fails, with last: reset first, then the newest messages, then live", TIMEOUT, async () => {
  // The edge replays at most JETSOCK_TEST_MAX_REPLAY messages: more missed is not recovered.
  const maxReplay = Number(need("JETSOCK_TEST_MAX_REPLAY"));
  const name = roomName("failed");
  const c = client({ autoConnect: false });
  const room = c.join(name, { last: 4 });
  const events = [];
  room.on("reset", (info) => events.push(["reset", info.reason, info.seq]));
  room.on("message", (m) => events.push(["msg", m.seq]));
  c.connect();
  await room.ready();
  const before = await room.publish({ n: -1 });
  await reach(c, "connected");
  while (room.seq !== before.seq) await new Promise((resolve) => setTimeout(resolve, 10));

  c.disconnect();
  await reach(c, "disconnected");
  const missed = await httpPublishMany(name, maxReplay + 5);
  events.length = 0;
  const newest = messages(room, 4);
  const joined = new Promise((resolve) => room.once("joined", resolve));
  c.connect();
  const info = await joined;
  assert.deepEqual([info.recovered, info.replayed, info.seq], [false, 4, missed.at(-1)]);
  await newest;
  const live = messages(room, 1);
  const { seq } = await room.publish({ n: "live" });
  await live;
  assert.deepEqual(events, [
    ["reset", "not_recovered", missed.at(-1)],
    ...missed.slice(-4).map((s) => ["msg", s]),
    ["msg", seq],
  ]);
  assert.equal(room.seq, seq);

  // An epoch from another life of the stream: the same, on the first join.
  const ename = roomName("epoch");
  const three = await httpPublishMany(ename, 3);
  const other = c.join(ename, { since: three[0], epoch: "another-life", last: 2 });
  const seen = [];
  other.on("reset", (i) => seen.push(i.reason));
  other.on("message", (m) => seen.push(m.seq));
  const two = messages(other, 2);
  assert.deepEqual(await other.ready().then((j) => [j.recovered, j.replayed]), [false, 2]);
  await two;
  assert.deepEqual(seen, ["not_recovered", ...three.slice(-2)]);
  assert.deepEqual(c.errors, []);
});

// --- presence (PROTOCOL.md section 10): the edge keeps it for live.presence.* rooms ---

const PRESENCE_ROOMS = need("JETSOCK_TEST_PRESENCE_ROOMS");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const seeing = (sub) => mint({ sub, presence: [PRESENCE_ROOMS], info: { name: sub.toUpperCase() } });

/** Wait until `check()` holds. */
async function until(check, what, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(20);
  }
}

const tabs = (room) => Object.fromEntries([...room.members.values()].map((m) => [m.sub, m.connections]));

test("presence: two users see each other join and leave; two tabs of one user count once", TIMEOUT, async () => {
  const name = roomName("presence");
  const ann1 = client({ token: seeing("ann") });
  const annRoom = ann1.join(name);
  await until(() => annRoom.members.has("ann"), "ann sees herself");
  assert.ok(ann1.features.includes("presence"));
  assert.deepEqual(annRoom.members.get("ann"), { sub: "ann", info: { name: "ANN" }, connections: 1 });

  const ben = client({ token: seeing("ben") });
  const benEvents = [];
  const benRoom = ben.join(name, { onPresence: (e) => benEvents.push(e) });
  await until(() => benRoom.members.size === 2, "ben sees both");
  await until(() => annRoom.members.has("ben"), "ann hears of ben");
  assert.deepEqual(annRoom.members.get("ben"), { sub: "ben", info: { name: "BEN" }, connections: 1 });
  assert.ok(benEvents[0].joined.some((u) => u.sub === "ann"), "the first who is told as an event");

  // A second tab of ann: she is present once, with two connections.
  const ann2 = client({ token: seeing("ann") });
  const secondTab = ann2.join(name);
  await until(() => secondTab.members.get("ann")?.connections === 2, "the new tab counts two");
  const who = await benRoom.presence();
  assert.deepEqual([who.room, who.count, who.connections, who.truncated], [name, 2, 3, false]);
  assert.deepEqual(who.members.map((m) => [m.sub, m.info, m.connections]), [
    ["ann", { name: "ANN" }, 2],
    ["ben", { name: "BEN" }, 1],
  ]);
  assert.deepEqual(tabs(benRoom), { ann: 2, ben: 1 }, "the answer replaced the members");

  // One tab closes: ann stays, with one connection; the other: she is gone.
  ann2.close();
  await sleep(400);
  await benRoom.presence();
  assert.deepEqual(tabs(benRoom), { ann: 1, ben: 1 });
  const left = benEvents.length;
  ann1.close();
  await until(() => !benRoom.members.has("ann"), "ben hears ann left");
  assert.deepEqual(tabs(benRoom), { ben: 1 });
  assert.ok(benEvents.slice(left).some((e) => e.left.some((u) => u.sub === "ann")));
  assert.equal((await ben.presence(name)).count, 1);
  assert.deepEqual(annRoom.members.size, 0, "a closed client's rooms have no members");
  assert.deepEqual([...ann1.errors, ...ben.errors], []);
});

test("presence: a rejoin resyncs the members with a who", TIMEOUT, async () => {
  const name = roomName("presence");
  const cat = client({ token: seeing("cat") });
  const dan = client({ token: seeing("dan") });
  const room = cat.join(name);
  dan.join(name);
  await until(() => room.members.size === 2, "cat sees both");
  const events = [];
  room.on("presence", (e) => events.push(e));
  cat.disconnect();
  await reach(cat, "disconnected");
  dan.close(); // cat cannot hear of it: she is away
  await sleep(300);
  assert.deepEqual(tabs(room), { cat: 1, dan: 1 }, "kept while away");
  cat.connect();
  await until(() => !room.members.has("dan"), "the who after the rejoin");
  assert.deepEqual(tabs(room), { cat: 1 });
  assert.ok(events.some((e) => e.left.some((u) => u.sub === "dan")));
});

test("presence: without the right, or in a room without presence, members stay empty and presence() rejects", TIMEOUT, async () => {
  const plain = client(); // a token without rooms.presence
  const room = plain.join(roomName("presence"));
  await room.ready();
  await sleep(300);
  assert.equal(room.members.size, 0);
  await assert.rejects(room.presence(), (e) => e instanceof JetsockError && e.code === "forbidden" && e.room === room.name);
  const seer = client({ token: mint({ sub: "eve", presence: [">"] }) });
  const elsewhere = seer.join(roomName("nopresence"));
  await elsewhere.ready();
  await assert.rejects(elsewhere.presence(), (e) => e.code === "bad_request");
  await assert.rejects(seer.presence("not a room"), (e) => e.code === "invalid_room");
  assert.deepEqual([...plain.errors, ...seer.errors], [], "the automatic who fails quietly");
});

// --- the HTTP stream transport (PROTOCOL.md section 11), pinned: node's own fetch(), no WebSocket ---

function streamClient(options = {}) {
  const c = client({ transports: ["stream"], WebSocket: undefined, ...options });
  c.connections = [];
  c.on("state", (state, info) => state === "connected" && c.connections.push(info));
  return c;
}

test("stream: join, publish with an id (stored once), history, presence, all over POST and server-sent events", TIMEOUT, async () => {
  const c = streamClient({ token: mint({ presence: [">"], info: { name: "Alice" } }) });
  const room = c.join(`live.presence.${randomUUID().slice(0, 8)}`);
  await room.ready();
  assert.equal(c.transport, "stream");
  assert.equal(c.connections[0].transport, "stream");
  assert.ok(c.features.includes("stream"), `features: ${c.features}`);
  const own = messages(room, 2);
  const a = await room.publish({ text: "one" }, { id: "stream-1" });
  assert.deepEqual(await room.publish({ text: "one" }, { id: "stream-1" }), { seq: a.seq, duplicate: true });
  const b = await room.publish({ text: "two" });
  const got = await own;
  assert.deepEqual(got.map((m) => [m.seq, m.data.text, m.from]), [
    [a.seq, "one", "alice"],
    [b.seq, "two", "alice"],
  ]);
  assert.equal(got[0].id, "stream-1");
  const page = await room.history({ limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.seq), [a.seq, b.seq]);
  assert.equal(page.more, false);
  const who = await room.presence();
  assert.deepEqual(who.members.map((m) => [m.sub, m.info?.name]), [["alice", "Alice"]]);
  // Many at once: posted in batches, one post at a time, every one acked and delivered once, in order.
  const burst = messages(room, 60);
  const acks = await Promise.all(Array.from({ length: 60 }, (_, n) => room.publish({ n })));
  const delivered = await burst;
  assert.deepEqual(delivered.map((m) => m.seq), acks.map((x) => x.seq).sort((x, y) => x - y));
  assert.deepEqual(delivered.map((m) => m.data.n).sort((x, y) => x - y), Array.from({ length: 60 }, (_, n) => n));
  assert.deepEqual(c.errors, []);
});

test("stream: replay with since across a reconnect, after disconnect() and after the edge ends the session", TIMEOUT, async () => {
  const c = streamClient();
  const room = c.join(roomName("stream-resume"));
  await room.ready();
  const own = messages(room, 1);
  const first = await room.publish({ n: 0 });
  await own;

  // disconnect() and connect(): a new stream, its opening request joining with since.
  c.disconnect();
  await reach(c, "disconnected");
  const sent = [];
  for (let n = 1; n <= 3; n++) sent.push(await httpPublish(room.name, { n }));
  const replay = messages(room, 3);
  c.connect();
  assert.deepEqual((await replay).map((m) => m.seq), sent);
  assert.equal(room.recovered, true);

  // The operator closes the session (4000): its close event ends the stream, the client backs off and resumes.
  const session = c.session;
  const lost = new Promise((resolve) => c.on("state", (s, info) => s === "reconnecting" && resolve(info)));
  const response = await fetch(`${URL_HTTP}/v1/subjects/alice/disconnect`, {
    method: "POST",
    headers: { Authorization: `Bearer ${mint({ sub: "ops", admin: true })}`, "Content-Type": "application/json" },
    body: JSON.stringify({ code: 4000, reason: "test" }),
  });
  assert.equal(response.status, 200, await response.text());
  assert.equal((await lost).code, 4000);
  const missed = [];
  for (let n = 4; n <= 6; n++) missed.push(await httpPublish(room.name, { n }));
  const again = messages(room, 3);
  await reach(c, "connected", 15000);
  assert.notEqual(c.session, session);
  assert.deepEqual((await again).map((m) => m.seq), missed);
  assert.equal(room.recovered, true);
  assert.equal(room.seq, missed.at(-1));
  assert.ok(room.seq > first.seq);
  assert.deepEqual(c.errors, []);
});
