// The demo chat: only /jetsock.js, no build step. It shows the connection state
// the way an app should ("Reconnecting in 4 s…"), and every message's seq so
// that a resume after a reconnect can be checked by eye: nothing lost, nothing twice.
// A room opens with its newest 50 messages (join option `last`); "Load older" pages
// back through the room's history, 50 at a time, until its beginning.
// "Online" lists who is in the room, live, from room.members (presence).
// Where WebSocket cannot open (a proxy that breaks the upgrade) the client falls back to the
// HTTP stream by itself: the pill says "Connected via HTTP stream".
import { Jetsock } from "/jetsock.js";

const $ = (id) => document.getElementById(id);
const state = $("state");
const list = $("messages");
let client = null;
let room = null;
let countdown = null;
let me = "";
let era = 0; // bumped when the list is cleared: a history page asked for before is dropped
const PAGE = 50;
const WHO_EVERY_MS = 2000;
let whoTimer = null;

function showState(name, info = {}) {
  clearInterval(countdown);
  state.className = `pill ${name}`;
  state.dataset.state = name;
  if (name === "connected") {
    state.dataset.transport = info.transport;
    state.textContent = info.transport === "stream" ? "Connected via HTTP stream" : "Connected";
    state.title = info.transport === "stream" ? "WebSocket could not open on this network: events over HTTP" : "WebSocket";
  } else if (name === "connecting") state.textContent = "Connecting…";
  else if (name === "closed") state.textContent = `Closed${info.code ? ` (${info.code})` : ""}`;
  else if (name === "reconnecting" && info.offline) {
    state.className = "pill offline";
    state.textContent = "Offline — waiting for the network";
  } else if (name === "reconnecting") {
    const until = Date.now() + (info.delayMs || 0);
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      state.textContent = left > 0 ? `Reconnecting in ${left} s…` : "Reconnecting…";
    };
    tick();
    countdown = setInterval(tick, 250);
  }
}

function render(msg) {
  const li = document.createElement("li");
  li.dataset.seq = String(msg.seq);
  if (msg.from === me) li.classList.add("mine");
  const text = typeof msg.data === "object" && msg.data !== null && "text" in msg.data ? msg.data.text : JSON.stringify(msg.data);
  for (const [cls, value] of [
    ["seq", `#${msg.seq}`],
    ["from", msg.from || "backend"],
    ["text", String(text)],
    ["time", new Date(msg.ts).toLocaleTimeString()],
  ]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = value;
    li.append(span);
  }
  return li;
}

function addMessage(msg) {
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
  list.append(render(msg));
  if (atBottom) list.scrollTop = list.scrollHeight;
  $("position").textContent = `#${room.seq ?? "?"} · epoch ${room.epoch ?? "?"}`;
}

// "Load older": the page before the oldest message shown, prepended without moving the view.
function showOlder(label = "Load older", done = false) {
  const button = $("older");
  button.textContent = label;
  button.disabled = done;
  button.dataset.state = done ? "beginning" : "more";
}

async function loadOlder() {
  const oldest = list.querySelector("li[data-seq]");
  // Nothing shown yet: everything up to the position (the room's head at the join).
  const before = oldest ? Number(oldest.dataset.seq) : (room.seq ?? 0) + 1;
  const asked = era;
  const button = $("older");
  button.disabled = true;
  try {
    const { messages, more } = await room.history({ before, limit: PAGE });
    if (asked != era) return; // the list was cleared meanwhile
    const height = list.scrollHeight;
    const first = list.firstElementChild;
    for (const msg of messages) list.insertBefore(render(msg), first);
    list.scrollTop += list.scrollHeight - height;
    showOlder(more ? "Load older" : "Beginning of the room", !more);
  } catch (err) {
    if (asked == era) showOlder();
    notice(`⚠ cannot load older messages: ${err.code ?? err.message ?? err}`);
  }
}

// Continuity lost: what is shown may have gaps, so start over; with `last` the newest
// messages follow at once, and "Load older" pages back from them.
function onReset(info) {
  era++;
  list.replaceChildren();
  showOlder();
  notice(`History reset (${info.reason}); showing the newest messages from #${info.seq} on`);
}

// The room's own lifecycle, beside the connection's: "joining…" while the join (or a rejoin
// after a reconnect) is on its way, "joined (recovered)" when a resume replayed everything
// missed, and the reason when the server refused or ended the membership.
function showRoom(name, info) {
  const el = $("room-state");
  el.dataset.state = name;
  el.className = `room-state ${name}`;
  if (name === "joining") el.textContent = "joining…";
  else if (name === "joined") el.textContent = info.recovered ? "joined (recovered)" : "joined";
  else el.textContent = `left: ${info.reason}`;
}

// Who is online: room.members, which the client fills with a `who` after each join (and
// rejoin) and keeps up to date with `presence` events, each user once. Events say only who
// came and who went, not how many tabs a user has open, so the list also asks `who` every
// couple of seconds (room.presence(), whose answer replaces room.members) for the counts.
function showMembers() {
  const people = $("people");
  if (!room || room.state === "left") return void (people.hidden = true);
  people.hidden = false;
  const label = (m) => (typeof m.info?.name === "string" && m.info.name) || m.sub;
  const members = [...room.members.values()].sort((a, b) => label(a).localeCompare(label(b)));
  $("online-count").textContent = `(${members.length})`;
  $("members").replaceChildren(
    ...members.map((m) => {
      const li = document.createElement("li");
      li.dataset.sub = m.sub;
      li.dataset.tabs = String(m.connections);
      if (m.sub === me) li.classList.add("me");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = label(m);
      const tabs = document.createElement("span");
      tabs.className = "tabs";
      tabs.textContent = `${m.connections} tab${m.connections === 1 ? "" : "s"}`;
      li.append(name, tabs);
      return li;
    }),
  );
}

function watchMembers(watched) {
  clearInterval(whoTimer);
  let asking = false;
  whoTimer = setInterval(async () => {
    if (watched !== room || watched.state !== "joined" || asking) return;
    asking = true;
    try {
      await watched.presence();
    } catch (err) {
      // No rooms.presence in the token, or a room that keeps no presence: no list.
      if (err.code === "forbidden" || err.code === "bad_request") clearInterval(whoTimer), ($("people").hidden = true);
    } finally {
      asking = false;
    }
  }, WHO_EVERY_MS);
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  list.append(li);
}

async function devToken(sub) {
  const response = await fetch(`/dev/token?sub=${encodeURIComponent(sub)}${location.search.replace("?", "&")}`);
  if (!response.ok) throw new Error("no dev token");
  return (await response.json()).token;
}

$("join").addEventListener("submit", async (event) => {
  event.preventDefault();
  me = $("name").value.trim();
  const roomName = $("room").value.trim();
  const pasted = $("token").value.trim();
  let token = pasted ? async () => pasted : () => devToken(me);
  if (!pasted) {
    try {
      await devToken(me);
    } catch {
      $("token-field").hidden = false;
      $("token").focus();
      return;
    }
  }
  client?.close();
  clearInterval(whoTimer);
  $("people").hidden = true;
  era++;
  list.replaceChildren();
  showOlder();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  client = new Jetsock(url, { token, persist: true });
  client.on("state", showState);
  client.on("error", (err) => notice(`⚠ ${err.message ?? err}`));
  room = client.join(roomName, { last: PAGE, onMessage: addMessage, onReset, onPresence: showMembers });
  showRoom(room.state);
  room.on("state", showRoom);
  room.on("left", showMembers);
  watchMembers(room);
  room.ready().catch((err) => notice(`⚠ cannot join ${roomName}: ${err.code}`));
  $("room-name").textContent = roomName;
  $("chat").hidden = false;
  $("text").focus();
  window.jetsockDemo = { client, room };
});

$("older").addEventListener("click", loadOlder);

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !room) return;
  input.value = "";
  try {
    await room.publish({ text });
  } catch (err) {
    notice(`⚠ not sent: ${err.message ?? err}`);
  }
});

const params = new URLSearchParams(location.search);
if (params.get("name")) {
  $("name").value = params.get("name");
  if (params.get("room")) $("room").value = params.get("room");
  $("join").requestSubmit();
}
