// jetsock's HTTP stream transport (PROTOCOL.md section 11, schemas/PROTOCOL.md 9.14), for
// networks whose proxies break the WebSocket upgrade. jetsock.js loads this module with a
// dynamic import() only when it falls back to it, so that bundlers split it into a chunk of
// its own and the clients that never need it never fetch it.
//
// A StreamSocket looks like a WebSocket to the client (readyState, send(), close(),
// onmessage, onclose), so that every rule of the client holds unchanged over it:
// - `POST <streamUrl>` (default: the WebSocket URL with http(s) for ws(s) and /v1/stream for
//   its last path segment) opens the session, its body the frames the client sends before the
//   welcome (its joins, resuming with since), with `Authorization: Bearer <token>`; the answer
//   is read with fetch() streaming as server-sent events: each `data:` event is one server
//   frame, passed on as a WebSocket message, `:` comments (the keepalive) are skipped, and the
//   `close` event ends the socket with its code, as a close frame would.
// - `POST <streamUrl>/<session>` sends the client's frames: one post at a time, in order, the
//   frames queued meanwhile batched into one array per post (at most 100 frames and 256 KiB,
//   the server's defaults), each with the client's current token (a refresh changes it).
//   204: accepted. 503: busy, none taken: the same frames again after Retry-After. 413: split
//   in two, or, for one frame, closed with 1009 as a WebSocket would be. Anything else (404:
//   the session is gone; a network error): the connection is lost (1006), and the client
//   reconnects and resumes with since, as after a dropped WebSocket.
// - A post every heartbeat at least (a `ping` when nothing else went): the server closes a
//   session whose client posted nothing for two heartbeats (4009).

const OPEN = 1;
const CLOSED = 3;
const MAX_FRAMES = 100; // per post: the server's stream_post_frames default
const MAX_BYTES = 262144; // per post: the server's stream_post_bytes default
const PING = '{"type":"ping"}';
const CLOSE_EVENT = /^\{\s*"type"\s*:\s*"close"\s*[,}]/;
const encoder = new TextEncoder();

const parse = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
};

/** The URL of `POST /v1/stream` beside a WebSocket URL: ws -> http, wss -> https, the last path segment (/ws) -> /v1/stream. */
export function streamUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  u.protocol = u.protocol.replace(/^ws/, "http");
  u.pathname = u.pathname.replace(/\/[^/]*$/, "") + "/v1/stream";
  u.search = u.hash = "";
  return u.href;
}

// A response's body is not needed: let the connection go back to the pool.
function discard(response) {
  try {
    response.body?.cancel().catch(() => {});
  } catch {
    // a body already read or locked
  }
}

// Frames for one post, taken from the head of the queue: at most MAX_FRAMES and MAX_BYTES
// (always one, however large: the server answers 413 for a frame over its limits).
function take(queue) {
  let n = 0;
  let bytes = 1;
  while (n < queue.length && n < MAX_FRAMES) {
    bytes += encoder.encode(queue[n]).byteLength + 1;
    if (n && bytes > MAX_BYTES) break;
    n++;
  }
  return queue.splice(0, n);
}

export default class StreamSocket {
  /** `client`: the Jetsock using it (its options, its token, its rooms); `token`: for the opening request. */
  constructor(client, token) {
    this.readyState = OPEN; // frames may be sent at once: they go with the opening request
    this.onmessage = this.onclose = this.onerror = null;
    this.session = null; // from the welcome: the stream's name in the posts' URL
    this._c = client;
    this._tk = token;
    this._url = String(client._o.streamUrl ?? streamUrl(client.url));
    this._q = []; // frames not posted yet, as text
    this._ab = new AbortController(); // ends the response and every post in flight
    this._hb = 0; // the heartbeat in ms, from the welcome
    this._buf = ""; // the start of a line that a chunk cut
    this._data = null; // the data lines of the event being read
    // _busy: a post is in flight; _kick: a pump is due; _pt: the ping timer; _st, _wake: the
    // wait before posting frames again after a 503.
    queueMicrotask(() => this._open());
  }

  /** Queue a frame (text); posted after the welcome, in order, batched with the frames queued meanwhile. */
  send(text) {
    if (this.readyState != OPEN) return;
    this._q.push(text);
    this._pump();
  }

  /** Stop: the response and the posts in flight are aborted; no close event follows. */
  close() {
    this.readyState = CLOSED;
    this._q = [];
    clearTimeout(this._pt);
    clearTimeout(this._st);
    this._wake?.();
    try {
      this._ab.abort();
    } catch {
      // aborted already
    }
  }

  // fetch, called plain (a browser's fetch refuses another `this`).
  _fetch(url, body, token) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    return (this._c._o.fetch ?? globalThis.fetch)(url, { method: "POST", headers, body, signal: this._ab.signal });
  }

  // The connection is over: the client acts on `code` as on a WebSocket's close code.
  _fail(code, reason) {
    if (this.readyState == CLOSED) return;
    this.close();
    this.onclose?.({ code, reason });
  }

  async _open() {
    const client = this._c;
    if (this.readyState != OPEN) return;
    // The joins go with the opening request (the server runs them right after the welcome,
    // without a round trip more): the client sends them as it would after a welcome.
    if (client._s == this && !client._ok) {
      client._ok = true;
      for (const room of client._R.values()) client._sj(room);
      client._ok = false;
    }
    try {
      const response = await this._fetch(this._url, `[${take(this._q).join(",")}]`, this._tk);
      if (this.readyState != OPEN) return discard(response);
      const type = response.headers?.get?.("content-type") ?? "";
      if (response.status != 200 || !response.body || !/^text\/event-stream/i.test(type)) {
        discard(response);
        return this._fail(1006, `the stream was refused: HTTP ${response.status}`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (this.readyState != OPEN) return;
        if (done) break;
        this._chunk(decoder.decode(value, { stream: true }));
      }
      this._fail(1006, "the stream ended without a close event");
    } catch (err) {
      this._fail(1006, String(err?.message ?? err));
    }
  }

  // A piece of the event stream: lines end with "\n" (an "\r" before it is dropped), a
  // blank line ends an event; a line may span chunks, and a chunk hold many events.
  _chunk(text) {
    let i;
    while (this.readyState == OPEN && (i = text.indexOf("\n")) >= 0) {
      this._line(this._buf + text.slice(0, i));
      this._buf = "";
      text = text.slice(i + 1);
    }
    this._buf += text;
  }

  _line(line) {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line.startsWith("data:")) {
      const value = line.slice(line[5] == " " ? 6 : 5);
      this._data = this._data == null ? value : `${this._data}\n${value}`;
    } else if (!line && this._data != null) {
      const data = this._data;
      this._data = null;
      this._event(data);
    }
    // ":" comments (the keepalive every heartbeat) and other fields: nothing to do.
  }

  _event(data) {
    if (CLOSE_EVENT.test(data)) {
      const f = parse(data);
      return this._fail(Number.isInteger(f?.code) ? f.code : 1006, String(f?.reason ?? ""));
    }
    if (this.session == null) {
      const f = parse(data);
      if (f?.type == "welcome" && typeof f.session == "string") {
        this.session = f.session;
        this._hb = (f.heartbeat > 0 ? f.heartbeat : 25) * 1000;
        this._arm();
        this._pump(); // what did not fit into the opening request
      }
    }
    this.onmessage?.({ data });
  }

  // The next ping is due a heartbeat after the last post began.
  _arm() {
    clearTimeout(this._pt);
    if (this._hb && this.readyState == OPEN) this._pt = setTimeout(() => this.send(PING), this._hb);
  }

  // Post what waits, once the frames sent in this turn of the event loop are all queued.
  _pump() {
    if (this._kick) return;
    this._kick = true;
    queueMicrotask(async () => {
      this._kick = false;
      if (this._busy || this.session == null) return;
      this._busy = true;
      try {
        while (this.readyState == OPEN && this._q.length) await this._post(take(this._q));
      } catch (err) {
        this._fail(1006, `a post failed: ${err?.message ?? err}`);
      }
      this._busy = false;
      if (this._q.length) this._pump(); // queued while the last post was finishing
    });
  }

  async _post(frames) {
    const url = `${this._url}/${encodeURIComponent(this.session)}`;
    for (;;) {
      this._arm(); // a post is a sign of life
      const response = await this._fetch(url, `[${frames.join(",")}]`, this._c._tk);
      discard(response);
      if (this.readyState != OPEN) return;
      const status = response.status;
      if (status >= 200 && status < 300) return;
      if (status == 503) {
        // Busy: none of them was taken. The same frames again, in order, after Retry-After.
        const seconds = Number(response.headers?.get?.("retry-after") ?? 1);
        await new Promise((resolve) => {
          this._wake = resolve;
          this._st = setTimeout(resolve, (seconds >= 0 ? Math.min(seconds, 30) : 1) * 1000);
        });
        if (this.readyState != OPEN) return;
        continue;
      }
      if (status == 413) {
        if (frames.length < 2) return this._fail(1009, "a frame over the server's limit");
        const half = frames.length >> 1;
        await this._post(frames.slice(0, half));
        return this._post(frames.slice(half));
      }
      // 404: no node holds the session any more; 403, 401, a proxy's 5xx: start over.
      throw new Error(`HTTP ${status}`);
    }
  }
}
