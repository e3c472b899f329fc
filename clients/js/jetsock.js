// jetsock browser client: WebSocket rooms with resume, idempotent publishes and
// reconnects that follow the close-code policy of PROTOCOL.md section 7.
// Zero dependencies, ESM. Runs in browsers and in node 20+ (pass
// options.WebSocket there); every browser global is looked up behind a guard.
//
//   const client = new Jetsock("wss://example.com/ws", { token: async () => jwt });
//   client.on("state", (state, info) => {});
//   const room = client.join("chat.lobby", { onMessage: (msg) => {} });
//   const { seq } = await room.publish({ text: "hi" });

const SUBPROTOCOL = "jetsock.v1";
const OPEN = 1; // WebSocket.OPEN; read as a number so that fakes need no constants
const ROOM_RE = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,15}$/;
const validRoom = (name) => typeof name === "string" && name.length <= 128 && ROOM_RE.test(name);
const RETRYABLE = new Set(["rate_limited", "unavailable"]);

const DEFAULTS = {
  maxQueued: 100, // publishes held while not connected
  backoffBase: 1000,
  backoffCap: 30000,
  stableAfterMs: 10000, // a connection up this long resets the backoff
  deadAfterMs: 10000, // silence allowed after our ping before the link is dead
  connectTimeoutMs: 15000, // socket open + welcome; 0 disables
  maxFrameBytes: 65536, // the server closes with 1009 (terminal) above this
};

/** An error from the server (`error` frame code) or from the client itself. */
export class JetsockError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = "JetsockError";
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/**
 * Reconnect delay in whole ms, "full jitter": uniform in [0, min(cap, base*factor^attempt)).
 * attempt counts from 0 (the first retry after a good connection).
 */
export function backoffDelay(attempt, { base = 1000, factor = 2, cap = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * factor ** Math.max(0, attempt)); // Infinity -> cap
  return Math.floor(random() * ceiling);
}

/**
 * What a client does after the server closes with `code` (PROTOCOL.md section 7).
 * - reconnect: false means stay closed (1000, 1009, 4500-4999 except 4501).
 * - immediate: reconnect at once with 0-1 s jitter (1001, 1012: a node draining).
 * - minDelayMs: lower bound for the backoff (4029: 5000).
 * - refreshToken: get a fresh token before reconnecting (4001, 4501).
 * - requireNewToken: reconnect only if that token differs from the last one (4501).
 * Everything else (1006, 1011, 1013, 4000-4499, unknown codes) backs off.
 */
export function closePolicy(code) {
  const p = { reconnect: true, immediate: false, minDelayMs: 0, refreshToken: false, requireNewToken: false };
  if (code === 1000 || code === 1009) p.reconnect = false;
  else if (code === 1001 || code === 1012) p.immediate = true;
  else if (code === 4001) p.refreshToken = true;
  else if (code === 4029) p.minDelayMs = 5000;
  else if (code === 4501) p.refreshToken = p.requireNewToken = true;
  else if (code >= 4500 && code <= 4999) p.reconnect = false;
  return p;
}

// --- small helpers; browser globals are guarded (node has none of them) ---

// For best-effort steps (storage quota, closing a closing socket).
function quietly(fn) {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

function isOffline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

function randomId() {
  const c = globalThis.crypto;
  // randomUUID exists only in secure contexts; getRandomValues everywhere.
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function resolveStorage(persist) {
  if (!persist) return null;
  if (typeof persist === "object") return persist;
  // Reading sessionStorage throws SecurityError where storage is blocked.
  return quietly(() => (typeof sessionStorage !== "undefined" ? sessionStorage : null)) ?? null;
}

const encoder = typeof TextEncoder !== "undefined" ? new TextEncoder() : null;
function byteLength(s) {
  return encoder ? encoder.encode(s).byteLength : s.length * 3; // * 3: UTF-8 worst case
}

/** One room membership. Made by client.join(); survives reconnects. */
export class Room {
  constructor(client, name, opts, saved) {
    if (!Number.isInteger(saved?.lastSeq)) saved = null;
    this._client = client;
    this.name = name;
    this.onMessage = opts.onMessage;
    this.onReset = opts.onReset;
    const userGave = opts.since != null || opts.epoch != null; // wins over a saved position
    /** Last seq received (or the head at join); null before the first join. Sent as `since` on rejoin. */
    this.lastSeq = userGave ? (opts.since ?? null) : (saved?.lastSeq ?? null);
    /** Epoch under which lastSeq was received. */
    this.epoch = userGave ? (opts.epoch ?? null) : (saved?.epoch ?? null);
    this._state = "idle"; // idle | joining | joined | left
    this._joinRef = null;
    this._hadSince = false;
    this._tries = 0;
    this._retryTimer = null;
  }

  /** "idle" (waiting for a connection), "joining", "joined" or "left". */
  get state() {
    return this._state;
  }

  /** Publish to this room (joining is not required for publishing). */
  publish(data, opts) {
    return this._client.publish(this.name, data, opts);
  }

  leave() {
    this._client._leave(this);
  }

  _joined(f) {
    this._state = "joined";
    this._tries = 0;
    this.epoch = f.epoch;
    // Recovered: the replayed msgs that follow move lastSeq on. Otherwise we
    // start at the head, and the app must reload what it missed.
    if (!f.recovered || !this._hadSince) this.lastSeq = f.seq;
    this._save();
    if (this._hadSince && !f.recovered) {
      this._client._call(this.onReset, { reason: "not_recovered", room: this.name, seq: f.seq, epoch: f.epoch });
    }
  }

  _msg(m) {
    if (this._state !== "joined") return; // frames of an earlier membership
    // The server promises no duplicates; this guards app state anyway.
    if (this.lastSeq != null && m.seq <= this.lastSeq) return;
    this.lastSeq = m.seq;
    this._save();
    this._client._call(this.onMessage, m);
  }

  _reset(f) {
    if (this._state !== "joined") return;
    this.lastSeq = f.seq;
    this.epoch = f.epoch;
    this._save();
    this._client._call(this.onReset, { reason: "reset", room: this.name, seq: f.seq, epoch: f.epoch });
  }

  _save() {
    const value = JSON.stringify({ lastSeq: this.lastSeq, epoch: this.epoch });
    quietly(() => this._client._storage?.setItem(this._client._storageKey(this.name), value));
  }

  _forget() {
    quietly(() => this._client._storage?.removeItem(this._client._storageKey(this.name)));
  }
}

export class Jetsock {
  constructor(url, options = {}) {
    this.url = String(url);
    this._opts = { ...DEFAULTS, ...options };
    this._WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WS !== "function") throw new TypeError("no WebSocket available: pass options.WebSocket");
    this._storage = resolveStorage(options.persist);
    this._listeners = new Map();
    this._rooms = new Map();
    this._requests = new Map(); // ref -> {kind, ...}, for the current connection only
    this._publishes = []; // unacknowledged publishes, oldest first
    this._timers = new Set();
    this._ref = 0;
    this._gen = 0; // bumped per attempt and on close; stale async steps compare it
    this._attempt = 0; // reconnect attempts since the last stable connection
    this._state = "idle";
    this._ws = null;
    this._connected = false; // welcome received on this._ws
    this._closed = false;
    this._token = null; // token of the current/last connection
    this._nextToken = null; // a token already fetched for the next attempt
    this._tokenReason = "connect"; // passed to token(): why a token is wanted
    this._lastCode = null; // close code that caused the pending reconnect
    this._retry = null; // {code, policy} while a reconnect is pending
    this._waitingOnline = false;
    this._wasHidden = false;
    this._lastRecv = 0;
    this._heartbeatMs = 25000;
    this.session = this.node = null; // from welcome

    this._onOnline = () => (this._connected ? this._probe(true) : this._reconnectNow());
    this._onOffline = () => {
      if (this._connected) this._probe(true); // the socket may be dead: check
      else if (this._retry && !this._waitingOnline) this._reconnectNow(); // turns into waiting for "online"
    };
    this._onVisibility = () => {
      if (document.visibilityState === "hidden") this._wasHidden = true;
      else if (this._wasHidden) {
        this._wasHidden = false;
        if (this._connected) this._probe(true);
        else this._reconnectNow();
      }
    };
    this._listen(true);
    // Start after the caller's synchronous code, so it sees the first "connecting".
    queueMicrotask(() => this._start());
  }

  /** "idle" | "connecting" | "connected" | "reconnecting" | "closed" */
  get state() {
    return this._state;
  }

  /** Add a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** Join a room; membership is kept (and resumed) across reconnects until leave(). */
  join(name, opts = {}) {
    if (this._closed) throw new JetsockError("closed", "the client is closed");
    if (!validRoom(name)) throw new JetsockError("invalid_room", `invalid room name: ${name}`);
    if (this._rooms.has(name)) throw new JetsockError("already_joined", `room ${name} is already joined`);
    if (opts.since != null && !(Number.isInteger(opts.since) && opts.since >= 0)) {
      throw new TypeError("since must be an integer >= 0");
    }
    const saved = this._storage && quietly(() => JSON.parse(this._storage.getItem(this._storageKey(name)) || "null"));
    const room = new Room(this, name, opts, saved);
    this._rooms.set(name, room);
    if (this._connected) this._sendJoin(room);
    return room;
  }

  /** The joined Room of that name, if any. */
  room(name) {
    return this._rooms.get(name);
  }

  /**
   * Publish `data` to `room`. Resolves {seq, duplicate} once stored. The same
   * `id` is reused on every retry, so the message is stored once.
   * Caveat: the server forgets ids after its duplicate window (default 120 s);
   * a retry later than that after a message was in fact stored stores it twice.
   */
  publish(room, data, opts = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) throw new JetsockError("closed", "the client is closed");
      if (!validRoom(room)) throw new JetsockError("invalid_room", `invalid room name: ${room}`);
      const json = JSON.stringify(data);
      if (json === undefined) throw new TypeError("data must be a JSON value");
      const entry = { room, id: String(opts.id ?? randomId()), json, resolve, reject, state: "queued", tries: 0, timer: null };
      if (byteLength(frameOf(entry, Number.MAX_SAFE_INTEGER)) > this._opts.maxFrameBytes) {
        throw new JetsockError("too_large", `publish frame over ${this._opts.maxFrameBytes} bytes`);
      }
      if (!this._connected && this._publishes.length >= this._opts.maxQueued) {
        throw new JetsockError("queue_full", `${this._opts.maxQueued} publishes already wait for a connection`);
      }
      this._publishes.push(entry);
      if (this._connected) this._sendPublish(entry);
    });
  }

  /** Close for good: code 1000, no reconnect, queued publishes rejected. */
  close() {
    if (!this._closed) this._terminate(1000, "closed by client");
  }

  // --- connection lifecycle ---

  _start() {
    this._connect().catch((err) => this._emitError(err));
  }

  async _connect() {
    if (this._closed) return;
    const gen = ++this._gen;
    this._setState("connecting");
    let token = null;
    if (this._nextToken != null) {
      token = this._nextToken;
      this._nextToken = null;
    } else if (this._opts.token != null) {
      let failed = null;
      token = await this._fetchToken(this._tokenReason).catch((err) => (failed = err));
      if (gen !== this._gen) return; // closed or superseded meanwhile
      if (failed) {
        this._emitError(failed); // e.g. the auth endpoint is down: retry with backoff
        return this._scheduleReconnect(this._lastCode ?? 1006);
      }
    }
    this._tokenReason = "connect";
    this._token = token;
    // No token: authentication by cookie (PROTOCOL.md section 3).
    const protocols = [SUBPROTOCOL];
    if (token) protocols.push("bearer." + token);
    if (this._opts.protocols) protocols.push(...[].concat(this._opts.protocols));
    let ws;
    try {
      ws = new this._WS(this.url, protocols);
    } catch (err) {
      // A bad URL or subprotocol: retrying would fail the same way.
      this._emitError(err);
      this._terminate(1006, String(err?.message ?? err));
      return;
    }
    this._ws = ws;
    this._lastRecv = Date.now();
    ws.onmessage = (ev) => this._ws === ws && this._onFrame(ev.data);
    ws.onclose = (ev) => this._ws === ws && this._onDrop(ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows; its code decides
    if (this._opts.connectTimeoutMs > 0) {
      this._connTimer = this._later(this._opts.connectTimeoutMs, () => this._abandon("no welcome in time"));
    }
  }

  async _fetchToken(reason) {
    const src = this._opts.token;
    const t = typeof src === "function" ? await src({ reason }) : src;
    if (typeof t !== "string" || t === "") throw new JetsockError("bad_token", "token() must give a non-empty string");
    return t;
  }

  // The socket closed on its own (server close or network loss).
  _onDrop(code, reason) {
    this._teardown();
    this._afterClose(code, reason).catch((err) => this._emitError(err));
  }

  // We give up on a silent socket: close it ourselves and reconnect as for 1006.
  _abandon(why) {
    const ws = this._teardown();
    quietly(() => ws?.close(4000, why));
    this._afterClose(1006, why).catch((err) => this._emitError(err));
  }

  async _afterClose(code, reason) {
    this._lastCode = code;
    const policy = closePolicy(code);
    if (!policy.reconnect) return this._terminate(code, reason);
    if (policy.requireNewToken) {
      // 4501: retrying with the token that was just refused cannot work.
      if (typeof this._opts.token !== "function") return this._terminate(code, reason);
      const gen = this._gen;
      const fresh = await this._fetchToken("rejected").catch((err) => (gen === this._gen && this._emitError(err), null));
      if (gen !== this._gen) return; // closed meanwhile
      if (fresh === null || fresh === this._token) return this._terminate(code, reason);
      this._nextToken = fresh;
    } else if (policy.refreshToken) {
      this._tokenReason = "expired"; // the next attempt asks token() for a fresh one
    }
    this._scheduleReconnect(code, policy);
  }

  _scheduleReconnect(code, policy = closePolicy(code)) {
    if (this._closed) return;
    this._retry = { code, policy };
    const attempt = this._attempt + 1;
    if (isOffline()) {
      // Attempts would only fail: wait for the "online" event without spending any.
      this._waitingOnline = true;
      this._setState("reconnecting", { attempt, delayMs: null, code, offline: true });
      return;
    }
    this._waitingOnline = false;
    const delayMs = policy.immediate
      ? Math.floor(Math.random() * 1000)
      : Math.max(policy.minDelayMs, backoffDelay(this._attempt, { base: this._opts.backoffBase, cap: this._opts.backoffCap }));
    this._reconnectTimer = this._later(delayMs, () => {
      this._reconnectTimer = null;
      this._reconnectNow();
    });
    this._setState("reconnecting", { attempt, delayMs, code });
  }

  // Run a pending reconnect now (timer fired, back online, tab visible again).
  _reconnectNow() {
    if (this._closed || !this._retry) return;
    this._clear(this._reconnectTimer);
    this._reconnectTimer = null;
    if (isOffline()) {
      if (!this._waitingOnline) this._scheduleReconnect(this._retry.code, this._retry.policy);
      return;
    }
    this._retry = null;
    this._waitingOnline = false;
    this._attempt++;
    this._start();
  }

  // Forget the current socket and everything tied to it; returns the socket.
  _teardown() {
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this._connected = false;
    for (const t of ["_connTimer", "_idleTimer", "_deadTimer", "_stableTimer"]) {
      this._clear(this[t]);
      this[t] = null;
    }
    this._requests.clear(); // replies can only come on the socket that was asked
    for (const room of this._rooms.values()) {
      this._clear(room._retryTimer);
      room._retryTimer = null;
      room._state = "idle";
    }
    // In-flight and waiting publishes go out again, with the same id, after reconnect.
    for (const p of this._publishes) {
      this._clear(p.timer);
      p.timer = null;
      p.state = "queued";
    }
    return ws;
  }

  _terminate(code, reason) {
    this._closed = true;
    this._gen++;
    const ws = this._teardown(); // null unless close() was called on a live socket
    quietly(() => ws?.close(1000, "closed by client"));
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._retry = null;
    this._listen(false);
    const err = new JetsockError("closed", `connection closed (${code})`, { closeCode: code });
    for (const p of this._publishes.splice(0)) p.reject(err);
    this._setState("closed", { code, reason: reason ?? "" });
  }

  // --- frames ---

  _onFrame(raw) {
    this._lastRecv = Date.now();
    if (this._deadTimer) {
      this._clear(this._deadTimer); // anything at all proves the link alive
      this._deadTimer = null;
    }
    const f = quietly(() => JSON.parse(raw));
    if (!f || typeof f !== "object") return this._emitError(new JetsockError("bad_frame", "not a JSON object frame"));
    if (!this._connected && f.type !== "welcome") return;
    const room = typeof f.room === "string" ? this._rooms.get(f.room) : undefined;
    switch (f.type) {
      case "welcome":
        return this._onWelcome(f);
      case "joined":
        if (f.ref != null) this._requests.delete(f.ref);
        if (room && room._state === "joining" && (f.ref == null || f.ref === room._joinRef)) room._joined(f);
        return;
      case "msg":
        return room?._msg(f);
      case "reset":
        return room?._reset(f);
      case "left":
        return this._onLeft(f, room);
      case "ack":
        return this._onAck(f);
      case "error":
        return this._onError(f);
      case "expiring":
        this._refresh().catch((err) => this._emitError(err));
        return;
      case "refreshed": {
        const req = this._requests.get(f.ref);
        if (req?.kind === "refresh") {
          this._requests.delete(f.ref);
          this._token = req.token;
        }
        return;
      }
      default:
        return; // pong, or a frame type from a newer server
    }
  }

  _onWelcome(f) {
    if (this._connected) return;
    const ws = this._ws;
    this._clear(this._connTimer);
    this._connTimer = null;
    this._connected = true;
    this.session = f.session ?? null;
    this.node = f.node ?? null;
    this._heartbeatMs = (f.heartbeat > 0 ? f.heartbeat : 25) * 1000;
    this._stableTimer = this._later(this._opts.stableAfterMs, () => {
      this._stableTimer = null;
      this._attempt = 0;
    });
    this._armIdle();
    // Joins first (resuming with since/epoch), then the publishes that waited.
    for (const room of this._rooms.values()) this._sendJoin(room);
    for (const p of this._publishes) if (p.state === "queued") this._sendPublish(p);
    if (this._ws === ws) this._setState("connected", { session: this.session, node: this.node });
  }

  _sendJoin(room) {
    const frame = { type: "join", room: room.name, ref: ++this._ref };
    if (room.lastSeq != null) {
      frame.since = room.lastSeq;
      if (room.epoch != null) frame.epoch = room.epoch;
    }
    room._hadSince = frame.since != null;
    room._joinRef = frame.ref;
    room._state = "joining";
    this._requests.set(frame.ref, { kind: "join", room });
    this._send(JSON.stringify(frame));
  }

  _leave(room) {
    if (this._rooms.get(room.name) !== room) return;
    this._rooms.delete(room.name);
    const member = room._state === "joining" || room._state === "joined";
    room._state = "left";
    this._clear(room._retryTimer);
    room._retryTimer = null;
    room._forget(); // leaving is deliberate: a later join starts from the head
    if (member && this._connected) {
      const ref = ++this._ref;
      this._requests.set(ref, { kind: "leave" });
      this._send(JSON.stringify({ type: "leave", room: room.name, ref }));
    }
  }

  _onLeft(f, room) {
    const req = f.ref != null ? this._requests.get(f.ref) : undefined;
    if (req?.kind === "leave") {
      this._requests.delete(f.ref); // the reply to our own leave
      return;
    }
    if (!room || room._state === "left") return;
    // The server ended the membership (a refreshed token lost the right).
    const reason = f.reason ?? "left";
    this._dropRoom(room, new JetsockError(reason, `left room ${room.name}: ${reason}`, { room: room.name }));
  }

  _dropRoom(room, err) {
    this._rooms.delete(room.name);
    room._state = "left";
    room._forget();
    this._emitError(err);
  }

  _sendPublish(entry) {
    const ref = ++this._ref;
    entry.state = "inflight";
    this._requests.set(ref, { kind: "publish", entry });
    this._send(frameOf(entry, ref));
  }

  _onAck(f) {
    const req = this._requests.get(f.ref);
    if (req?.kind !== "publish") return;
    this._requests.delete(f.ref);
    this._settle(req.entry);
    req.entry.resolve({ seq: f.seq, duplicate: f.duplicate === true });
  }

  _onError(f) {
    const req = f.ref != null ? this._requests.get(f.ref) : undefined;
    if (req) this._requests.delete(f.ref);
    const retry = RETRYABLE.has(f.code);
    if (req?.kind === "publish") {
      const entry = req.entry;
      if (!retry) {
        this._settle(entry);
        entry.reject(new JetsockError(f.code, f.message, { room: entry.room, id: entry.id }));
        return;
      }
      entry.state = "waiting"; // same id on the retry: stored once
      entry.timer = this._later(this._retryDelay(++entry.tries), () => {
        entry.timer = null;
        if (this._connected) this._sendPublish(entry);
        else entry.state = "queued";
      });
    } else if (req?.kind === "join") {
      const room = req.room;
      if (this._rooms.get(room.name) !== room) return;
      room._state = "idle";
      if (retry) {
        room._retryTimer = this._later(this._retryDelay(++room._tries), () => {
          room._retryTimer = null;
          if (this._connected && this._rooms.get(room.name) === room) this._sendJoin(room);
        });
        return;
      }
      // forbidden, invalid_room, too_many_rooms...: retrying cannot help.
      this._dropRoom(room, new JetsockError(f.code, f.message, { room: room.name }));
    } else if (req?.kind !== "leave") {
      // leave: not_joined means we are not a member anyway. Others (refresh,
      // frames without ref) are reported.
      this._emitError(new JetsockError(f.code, f.message));
    }
  }

  _settle(entry) {
    const i = this._publishes.indexOf(entry);
    if (i >= 0) this._publishes.splice(i, 1);
    this._clear(entry.timer);
    entry.timer = null;
  }

  // "expiring": swap the token on the open connection; no reconnect.
  async _refresh() {
    if (typeof this._opts.token !== "function") return; // a fixed token cannot be renewed
    const ws = this._ws;
    const token = await this._fetchToken("refresh").catch((err) => (this._emitError(err), null));
    if (token === null || this._ws !== ws || !this._connected) return;
    const ref = ++this._ref;
    this._requests.set(ref, { kind: "refresh", token });
    this._send(JSON.stringify({ type: "refresh", token, ref }));
  }

  // --- liveness: browsers cannot see protocol pings, so ping in-band ---

  _armIdle() {
    const hb = this._heartbeatMs;
    const due = this._deadTimer ? hb : this._lastRecv + hb - Date.now();
    this._idleTimer = this._later(Math.max(0, due), () => {
      this._idleTimer = null;
      if (Date.now() - this._lastRecv >= hb) this._probe(false);
      this._armIdle();
    });
  }

  // Send a ping; if nothing at all arrives within deadAfterMs, the link is dead.
  _probe(force) {
    if (!this._connected || (this._deadTimer && !force)) return;
    this._send(JSON.stringify({ type: "ping" }));
    if (this._deadTimer) return;
    this._deadTimer = this._later(this._opts.deadAfterMs, () => {
      this._deadTimer = null;
      this._abandon("heartbeat timeout");
    });
  }

  // --- plumbing ---

  _send(text) {
    const ws = this._ws;
    // Not open (closing): the close event follows, and requeues what was not acked.
    return !!ws && ws.readyState === OPEN && quietly(() => (ws.send(text), true)) === true;
  }

  _retryDelay(tries) {
    // "equal jitter": never 0, so a rate-limited retry does not fire at once.
    const d = Math.min(this._opts.backoffCap, this._opts.backoffBase * 2 ** (tries - 1));
    return Math.floor(d / 2 + (Math.random() * d) / 2);
  }

  _storageKey(room) {
    return `jetsock:${this.url}:${room}`;
  }

  // Every timer goes through here, so that closing can clear them all.
  _later(ms, fn) {
    const t = setTimeout(() => (this._timers.delete(t), fn()), ms);
    this._timers.add(t);
    return t;
  }

  _clear(t) {
    if (t == null) return;
    clearTimeout(t);
    this._timers.delete(t);
  }

  _listen(on) {
    const m = on ? "addEventListener" : "removeEventListener";
    if (typeof window !== "undefined" && typeof window[m] === "function") {
      window[m]("online", this._onOnline);
      window[m]("offline", this._onOffline);
    }
    if (typeof document !== "undefined" && typeof document[m] === "function") {
      document[m]("visibilitychange", this._onVisibility);
    }
  }

  _setState(state, info) {
    this._state = state;
    this._emit("state", state, info);
  }

  // Call an app callback; its exceptions must not break the client.
  _call(fn, arg) {
    if (typeof fn !== "function") return;
    try {
      fn(arg);
    } catch (err) {
      this._emitError(err);
    }
  }

  _emitError(err) {
    if (this._listeners.get("error")?.size) this._emit("error", err);
    else globalThis.console?.warn?.("jetsock:", err); // never swallow silently
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        if (event === "error") globalThis.console?.error?.(err);
        else this._emitError(err);
      }
    }
  }
}

// The data is serialized once at publish(); each (re)send only changes the ref.
function frameOf(entry, ref) {
  return `{"type":"publish","ref":${ref},"room":${JSON.stringify(entry.room)},"id":${JSON.stringify(entry.id)},"data":${entry.json}}`;
}

export default Jetsock;
