// Type declarations for jetsock.js (the jetsock browser client).

/** Why the client asks for a token: pass-through hint for token caches. */
export interface TokenContext {
  /**
   * "connect": a (re)connect attempt; "expired": after close 4001;
   * "rejected": after close 4501 (only a different token leads to a reconnect);
   * "refresh": the server sent `expiring`.
   */
  reason: "connect" | "expired" | "rejected" | "refresh";
}

/** A fixed token, or a function giving a fresh one (called on every connect). */
export type TokenSource = string | ((ctx: TokenContext) => string | Promise<string>);

/** The part of the Web Storage API the client uses (sessionStorage by default). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of a WebSocket the client uses; browsers' WebSocket satisfies it. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // The client sets these; it reads ev.data (message) and ev.code, ev.reason (close).
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
}

export type WebSocketConstructorLike = new (url: string, protocols: string[]) => WebSocketLike;

export interface JetsockOptions {
  /** Token source; offered as subprotocol `bearer.<token>`. Without it the server's cookie is used. */
  token?: TokenSource;
  /** Keep {lastSeq, epoch} per room in sessionStorage (true) or in the given storage, so a reload resumes. */
  persist?: boolean | StorageLike;
  /** Publishes held while not connected; more are rejected with code "queue_full". Default 100. */
  maxQueued?: number;
  /** Reconnect backoff base in ms (full jitter, doubling). Default 1000. */
  backoffBase?: number;
  /** Reconnect backoff cap in ms. Default 30000. */
  backoffCap?: number;
  /** A connection up this long resets the backoff. Default 10000. */
  stableAfterMs?: number;
  /** After an unanswered app-level ping, the connection is declared dead after this long. Default 10000. */
  deadAfterMs?: number;
  /** Time allowed from socket creation to `welcome`; 0 disables. Default 15000. */
  connectTimeoutMs?: number;
  /** Largest publish frame sent; larger publishes are rejected with code "too_large". Default 65536. */
  maxFrameBytes?: number;
  /** Extra subprotocols offered after "jetsock.v1" and the bearer token. */
  protocols?: string | string[];
  /** WebSocket constructor (node, tests); default globalThis.WebSocket. */
  WebSocket?: WebSocketConstructorLike;
}

export type State = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ConnectedInfo {
  session: string | null;
  node: string | null;
}

export interface ReconnectingInfo {
  /** 1-based number of the coming attempt since the last stable connection. */
  attempt: number;
  /** Delay before the attempt; null while offline (waiting for the "online" event). */
  delayMs: number | null;
  /** The close code that caused it (1006 for a connection the client found dead). */
  code: number;
  offline?: true;
}

export interface ClosedInfo {
  code: number;
  reason: string;
}

/** Arguments of a "state" listener: narrowing on `state` narrows `info`. */
export type StateArgs =
  | [state: "connecting", info: undefined]
  | [state: "connected", info: ConnectedInfo]
  | [state: "reconnecting", info: ReconnectingInfo]
  | [state: "closed", info: ClosedInfo];

export interface Message<T = unknown> {
  type: "msg";
  room: string;
  seq: number;
  /** Stored time, unix ms. */
  ts: number;
  data: T;
  id?: string;
  from?: string;
  encoding?: "base64";
}

export interface ResetInfo {
  /** "not_recovered": a resume with `since` could not replay; "reset": the stream was recreated. */
  reason: "not_recovered" | "reset";
  room: string;
  /** Delivery goes on after this seq; reload app state from your backend. */
  seq: number;
  epoch: string;
}

export interface JoinOptions<T = unknown> {
  onMessage?: (msg: Message<T>) => void;
  onReset?: (info: ResetInfo) => void;
  /** Resume after this seq (overrides a persisted position). */
  since?: number;
  /** Epoch under which `since` was received. */
  epoch?: string;
}

export interface PublishOptions {
  /** Idempotency key, 1-256 chars; default a random UUID. Retries reuse it. */
  id?: string;
}

export interface PublishResult {
  seq: number;
  /** True when the server had already stored this id. */
  duplicate: boolean;
}

export declare class JetsockError extends Error {
  constructor(code: string, message?: string, extra?: object);
  name: "JetsockError";
  /**
   * A server error code (bad_request, invalid_room, forbidden, not_joined, too_many_rooms,
   * too_large, rate_limited, unavailable, internal), a `left` reason, or a client code:
   * "closed", "queue_full", "too_large", "already_joined", "bad_token", "bad_frame".
   */
  code: string;
  room?: string;
  id?: string;
  /** For code "closed": the close code that ended the client. */
  closeCode?: number;
}

export declare class Room<T = unknown> {
  private constructor();
  readonly name: string;
  /** Last seq received (or the room's head at join); null before the first join. */
  lastSeq: number | null;
  /** Epoch under which lastSeq was received. */
  epoch: string | null;
  onMessage?: (msg: Message<T>) => void;
  onReset?: (info: ResetInfo) => void;
  /** "idle" (waiting for a connection), "joining", "joined" or "left". */
  readonly state: "idle" | "joining" | "joined" | "left";
  /** Publish to this room; queued while disconnected and retried with the same id. */
  publish(data: unknown, opts?: PublishOptions): Promise<PublishResult>;
  leave(): void;
}

export declare class Jetsock {
  constructor(url: string | URL, options?: JetsockOptions);
  readonly url: string;
  readonly state: State;
  /** From the last `welcome`. */
  session: string | null;
  node: string | null;
  on(event: "state", fn: (...args: StateArgs) => void): () => void;
  on(event: "error", fn: (err: Error) => void): () => void;
  off(event: "state" | "error", fn: (...args: any[]) => void): void;
  /** Throws JetsockError "invalid_room", "already_joined" or "closed". */
  join<T = unknown>(room: string, opts?: JoinOptions<T>): Room<T>;
  room(name: string): Room | undefined;
  publish(room: string, data: unknown, opts?: PublishOptions): Promise<PublishResult>;
  /** Close with 1000; no reconnect; pending publishes reject with code "closed". */
  close(): void;
}

export interface BackoffOptions {
  base?: number;
  factor?: number;
  cap?: number;
  random?: () => number;
}

/** Full jitter: floor(random() * min(cap, base * factor ** attempt)), in ms. */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions): number;

export interface ClosePolicy {
  /** false: stay closed (1000, 1009, 4500-4999 except 4501). */
  reconnect: boolean;
  /** Reconnect at once with 0-1 s jitter (1001, 1012). */
  immediate: boolean;
  /** Least delay before reconnecting (5000 for 4029, else 0). */
  minDelayMs: number;
  /** Get a fresh token before reconnecting (4001, 4501). */
  refreshToken: boolean;
  /** Reconnect only if the fresh token differs from the last (4501). */
  requireNewToken: boolean;
}

export declare function closePolicy(code: number): ClosePolicy;

export default Jetsock;
