// Type tests of clients/js/jetsock.d.ts, checked by `tsc -p tests/js/types` (never run).
// Everything here must compile, and every line after `// @ts-expect-error` must fail
// to (tsc reports an unused @ts-expect-error as an error), so misuses stay caught.

import Default, {
  Jetsock,
  JetsockError,
  RULES,
  closePolicy,
  backoffDelay,
  type ErrorCode,
  type JSONValue,
  type JSONCompatible,
  type Message,
  type Room,
  type JoinedInfo,
  type LeftInfo,
  type PublishResult,
  type ConnectedInfo,
  type HistoryPage,
  type HistoryOptions,
  type JSONObject,
  type Presence,
  type PresenceEvent,
  type PresenceMember,
  type PresenceUser,
  type Transport,
  type FetchLike,
} from "../../../clients/js/jetsock.js";

interface Chat {
  text: string;
  tag?: string;
  mentions?: { user: string; at: number }[];
}

declare const wsImpl: new (url: string, protocols: string[]) => {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
};

async function uses(): Promise<void> {
  const net = new EventTarget();
  const client: Jetsock = new Default("ws://localhost/ws", {
    token: async ({ reason }) => (reason === "refresh" ? "jwt" : null),
    autoConnect: false,
    publishTimeoutMs: 5000,
    debug: (...args) => console.log(args),
    networkEvents: net,
    visibilityEvents: null,
    maxQueued: 10,
    WebSocket: wsImpl,
  });
  new Jetsock(new URL("ws://localhost/ws"), { token: "jwt", debug: true, persist: true });
  new Jetsock("ws://localhost/ws", { networkEvents: window, visibilityEvents: document, persist: sessionStorage });
  new Jetsock("ws://localhost/ws", { token: () => "sync", networkEvents: null, autoConnect: true });

  // Transports: the default order, pinned, the stream's URL and fetch.
  new Jetsock("wss://example.com/ws", { transports: ["websocket", "stream"] });
  new Jetsock("wss://example.com/ws", { transports: ["stream"], streamUrl: "https://example.com/v1/stream" });
  const pinned: readonly Transport[] = ["websocket"] as const;
  new Jetsock("wss://example.com/ws", { transports: pinned, streamUrl: new URL("https://example.com/v1/stream") });
  const viaFetch: FetchLike = (url, init) => fetch(url, init);
  new Jetsock("ws://localhost/ws", { transports: ["stream"], fetch: viaFetch });
  new Jetsock("ws://localhost/ws", { fetch });
  // @ts-expect-error: not a transport
  new Jetsock("ws://localhost/ws", { transports: ["polling"] });
  const now: Transport | null = client.transport;

  // Client state: narrowing on the state narrows its info.
  const offState: () => void = client.on("state", (state, info) => {
    if (state === "connected") {
      const session: string | null = info.session;
      const via: Transport = info.transport;
      const streamed: boolean = info.transport === "stream";
    } else if (state === "reconnecting") {
      const delay: number | null = info.delayMs;
      const attempt: number = info.attempt;
    } else if (state === "closed") {
      const code: number = info.code;
      const loggedOut: true | undefined = info.loggedOut;
    } else if (state === "disconnected") {
      const reason: string = info.reason;
    } else {
      const none: undefined = info;
    }
  });
  offState();
  client.once("error", (err) => {
    if (err instanceof JetsockError) {
      const where: string | undefined = err.room;
      const closeCode: number | undefined = err.closeCode;
    }
  });
  const onError = (err: Error) => console.log(err.message);
  client.on("error", onError);
  client.off("error", onError);

  client.connect();
  const info: ConnectedInfo = await client.ready({ timeoutMs: 1000, signal: AbortSignal.timeout(2000) });
  client.disconnect();

  // Typed rooms: T is the data of the room's messages and publishes.
  const room: Room<Chat> = client.join<Chat>("chat.lobby", {
    onMessage: (msg) => console.log(msg.data.text),
    onReset: (reset) => console.log(reset.reason, reset.seq),
    since: 3,
    epoch: "e1",
  });
  room.on("message", (msg: Message<Chat>) => console.log(msg.seq, msg.data.tag ?? "", msg.from));
  room.on("state", (state, stateInfo) => {
    if (state === "joined") {
      const recovered: boolean = stateInfo.recovered;
    } else if (state === "left") {
      const error: JetsockError | null = stateInfo.error;
    } else {
      const none: undefined = stateInfo;
    }
  });
  room.once("joined", (joined: JoinedInfo) => joined.epoch);
  room.on("left", (left: LeftInfo) => left.reason);
  room.on("reset", (reset) => reset.epoch);
  const onMessage = (msg: Message<Chat>) => msg.data.text;
  room.on("message", onMessage);
  room.off("message", onMessage);
  const joined: JoinedInfo = await room.ready({ timeoutMs: 5000 });
  const seq: number | null = room.seq;
  const lastSeq: number | null = room.lastSeq;
  const state: "joining" | "joined" | "left" = room.state;
  const error: JetsockError | null = room.error;
  const recovered: boolean | null = room.recovered;
  const replayed: number | null = room.replayed;
  const joinedReplayed: number = joined.replayed;

  // The newest messages on joining (and after a failed resume), then history pages.
  const withLast: Room<Chat> = client.join<Chat>("chat.last", { last: 50, since: 3, epoch: "e1" });
  const page: HistoryPage<Chat> = await withLast.history({ before: 120, limit: 50 });
  const texts: string[] = page.messages.map((m: Message<Chat>) => m.data.text);
  const more: boolean = page.more;
  const pageEpoch: string = page.epoch;
  const opts: HistoryOptions = { limit: 10, timeoutMs: 0, signal: controllerForHistory().signal };
  const untyped: HistoryPage = await client.history("chat.any", opts);
  const first: JSONValue | undefined = untyped.messages[0]?.data;
  const typed: HistoryPage<number> = await client.history<number>("chat.numbers");
  await withLast.history();

  // Presence: members kept by the client, events, who on demand; `info` typed per room.
  interface Profile {
    name: string;
    avatar?: string;
  }
  const seen: string[] = [];
  const lobby: Room<Chat, Profile> = client.join<Chat, Profile>("chat.people", {
    onPresence: ({ joined, left }) => seen.push(...joined.map((u) => u.info?.name ?? u.sub), ...left.map((u) => u.sub)),
  });
  lobby.on("presence", (event: PresenceEvent<Profile>) => {
    const firstJoined: PresenceUser<Profile> | undefined = event.joined[0];
    const leftSub: string | undefined = event.left[0]?.sub;
    void [firstJoined, leftSub];
  });
  lobby.once("presence", () => {});
  const members: ReadonlyMap<string, PresenceMember<Profile>> = lobby.members;
  for (const [sub, member] of lobby.members) {
    const tabs: number = member.connections;
    const name: string = member.info?.name ?? sub;
    void [tabs, name];
  }
  const who: Presence<Profile> = await lobby.presence({ timeoutMs: 2000, signal: new AbortController().signal });
  const counts: [number, number, boolean, string] = [who.count, who.connections, who.truncated, who.room];
  const firstInfo: Profile | undefined = who.members[0]?.info;
  const plain: Presence = await client.presence("chat.people");
  const plainInfo: JSONObject | undefined = plain.members[0]?.info;
  const typedWho: Presence<Profile> = await client.presence<Profile>("chat.people");
  const defaultRoom: Room = client.join("chat.default");
  const defaultInfo: JSONValue | undefined = defaultRoom.members.get("bob")?.info?.name;
  const features: readonly string[] = client.features;
  const onPresence = (event: PresenceEvent<Profile>) => event.left.length;
  lobby.on("presence", onPresence);
  lobby.off("presence", onPresence);

  const controller = new AbortController();
  const result: PublishResult = await room.publish({ text: "hi" }, { id: "m-1", timeoutMs: 1000, signal: controller.signal });
  await room.publish({ text: "hi", tag: "greeting", mentions: [{ user: "bob", at: 0 }] });
  await room.publish({ text: "hi", tag: undefined }); // an optional property may be undefined
  await room.leave();

  // Untyped rooms take any JSON value.
  const any: Room = client.join("chat.any");
  await any.publish({ nested: [1, "two", null, { three: true }] });
  await any.publish(null);
  client.room("chat.any")?.publish("text");

  // client.publish checks any JSON-compatible data, interfaces included.
  const chat: Chat = { text: "hi" };
  await client.publish("chat.lobby", chat);
  await client.publish("chat.lobby", [1, 2, 3], { id: "k" });
  await client.publish("chat.lobby", JSON.parse("{}")); // any passes
  const compatible: JSONCompatible<Chat> = chat;
  const value: JSONValue = { a: [1, { b: null }] };

  // Error codes are a closed union: a switch over them, and a typo is caught.
  try {
    await client.publish("chat.lobby", 1);
  } catch (err) {
    if (err instanceof JetsockError) {
      const code: ErrorCode = err.code;
      switch (err.code) {
        case "queue_full":
        case "too_large":
        case "forbidden":
        case "logged_out":
        case "timeout":
        case "aborted":
          break;
        case "closed":
          console.log(err.closeCode);
          break;
        default:
          console.log(err.code, err.room, err.id);
      }
      // @ts-expect-error: no such code
      if (err.code === "queue_fulll") console.log("typo");
    }
  }
  new JetsockError("timeout", "slow");
  // @ts-expect-error: not an error code
  new JetsockError("nope");

  // The rules and helpers.
  const policy = closePolicy(4029);
  const min: number = policy.minDelayMs;
  const delay: number = backoffDelay(2, { base: 500, random: () => 0.5 });
  const maxQueued: number = RULES.defaults.maxQueued;
  const pattern: string = RULES.room.pattern;

  // --- misuses ---

  // @ts-expect-error: wrong data for Room<Chat>
  room.publish({ text: 1 });
  // @ts-expect-error: missing required property
  room.publish({ tag: "x" });
  // @ts-expect-error: a function is not JSON
  client.publish("chat.lobby", () => 1);
  // @ts-expect-error: undefined is not JSON
  client.publish("chat.lobby", undefined);
  // @ts-expect-error: a bigint is not JSON
  client.publish("chat.lobby", 10n);
  // @ts-expect-error: a symbol is not JSON
  client.publish("chat.lobby", Symbol("s"));
  // @ts-expect-error: a nested function is not JSON
  client.publish("chat.lobby", { text: "hi", onClick: () => {} });
  // @ts-expect-error: a deeply nested bigint is not JSON
  client.publish("chat.lobby", { a: [{ b: 1n }] });
  // @ts-expect-error: a function is not JSON, in an untyped room too
  any.publish(() => 1);
  // @ts-expect-error: undefined is not JSON, in an untyped room too
  any.publish(undefined);
  interface WithMethod {
    text: string;
    render(): string;
  }
  const bad = client.join<WithMethod>("chat.bad");
  // @ts-expect-error: a room whose data type is not JSON cannot publish it
  bad.publish({ text: "hi", render: () => "hi" });
  // @ts-expect-error: publish options are typed
  room.publish({ text: "hi" }, { timeout: 5 });

  // @ts-expect-error: unknown client event
  client.on("message", () => {});
  // @ts-expect-error: unknown room event
  room.on("msg", () => {});
  // @ts-expect-error: a state listener gets a state string, not a number
  client.on("state", (s: number) => s);
  // @ts-expect-error: a message listener of another data type
  room.on("message", (msg: Message<number>) => msg.data);
  // @ts-expect-error: a joined listener gets JoinedInfo
  room.on("joined", (joinedInfo: LeftInfo) => joinedInfo);
  client.on("state", (s, i) => {
    // @ts-expect-error: info is narrowed, and "connecting" has none
    if (s === "connecting") console.log(i.session);
    // @ts-expect-error: no such state
    if (s === "open") console.log(i);
  });
  room.on("state", (s) => console.log(s)); // one parameter is fine too
  client.on("state", (s) => console.log(s));
  room.on("state", (s) => {
    // @ts-expect-error: the old room state "idle" is gone
    if (s === "idle") console.log(s);
  });
  // @ts-expect-error: state is read-only
  client.state = "closed";
  // @ts-expect-error: a token source gives a string or null
  new Jetsock("ws://x/ws", { token: async () => 42 });
  // @ts-expect-error: the signal must be an AbortSignal
  client.ready({ signal: "now" });
  // @ts-expect-error: last is a number
  client.join("chat.x", { last: "50" });
  // @ts-expect-error: history options are typed
  room.history({ from: 3 });
  // @ts-expect-error: a history page of a Room<Chat> holds Chat messages
  const wrong: HistoryPage<number> = await room.history();
  // @ts-expect-error: history needs a room name
  client.history();
  // @ts-expect-error: members is read-only
  lobby.members.set("eve", { sub: "eve", connections: 1 });
  // @ts-expect-error: members is read-only (the property too)
  lobby.members = new Map();
  // @ts-expect-error: info has the room's info type
  const wrongInfo: number | undefined = lobby.members.get("bob")?.info;
  // @ts-expect-error: a presence listener gets a PresenceEvent
  lobby.on("presence", (event: JoinedInfo) => event);
  // @ts-expect-error: left users are {sub}, not strings
  lobby.on("presence", ({ left }) => left.map((s: string) => s));
  // @ts-expect-error: presence takes no history options
  lobby.presence({ before: 3 });
  // @ts-expect-error: client.presence needs a room name
  client.presence();
  // @ts-expect-error: onPresence gets the event
  client.join("chat.x", { onPresence: (count: number) => count });
  // @ts-expect-error: features is read-only
  client.features.push("x");

  void [members, counts, firstInfo, plainInfo, typedWho, defaultInfo, features, seen, wrongInfo];
  void [replayed, joinedReplayed, texts, more, pageEpoch, first, typed, wrong];
  void [info, joined, seq, lastSeq, state, error, recovered, result, compatible, value, policy, min, delay, maxQueued, pattern];
}

function controllerForHistory(): AbortController {
  return new AbortController();
}

void uses;
