// The operator page: polls /admin/api/state with an admin token and renders it.
// The token lives in sessionStorage (this tab only), never in the URL.
const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
let timer = null;
let previous = null;

function cell(text, numeric = false) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function fill(tbody, rows, columns) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell("none");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const values of rows) {
    const tr = document.createElement("tr");
    values.forEach(([text, numeric]) => tr.append(cell(String(text), numeric)));
    tbody.append(tr);
  }
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}

function perSecond(now, before, key) {
  if (!before) return "–";
  const seconds = now.time - before.time;
  return seconds > 0 ? Math.round((now[key] - before[key]) / seconds).toLocaleString() : "–";
}

function render(state) {
  $("node").textContent = state.node;
  $("t-connections").textContent = state.connections.authenticated.toLocaleString();
  $("t-pending").textContent = `${state.connections.pending} authenticating`;
  $("t-rooms").textContent = state.rooms.toLocaleString();
  $("t-in").textContent = perSecond(state, previous, "messages_in");
  $("t-out").textContent = perSecond(state, previous, "messages_out");
  const nats = $("t-nats");
  nats.textContent = state.nats.connected ? "connected" : "DOWN";
  nats.className = state.nats.connected ? "ok" : "bad";
  $("t-reconnects").textContent = `${state.nats.reconnects} reconnects`;
  fill($("rooms"), state.top_rooms.map((r) => [[r.room], [r.members.toLocaleString(), true]]), 2);
  fill($("presence"), state.presence.map((r) => [[r.room], [r.users.toLocaleString(), true], [r.connections.toLocaleString(), true]]), 3);
  fill(
    $("outboxes"),
    state.fullest_outboxes.map((c) => [[c.session], [c.sub], [bytes(c.pending_bytes), true], [c.rooms, true], [`${Math.round(c.age_s)} s`, true]]),
    5,
  );
  fill(
    $("closes"),
    state.closes.map((c) => [[c.code], [c.reason], [c.recent, true], [c.total, true]]),
    4,
  );
  $("updated").textContent = `updated ${new Date(state.time * 1000).toLocaleTimeString()}`;
  previous = state;
}

function signedOut(message) {
  clearTimeout(timer);
  sessionStorage.removeItem("jetsock-admin-token");
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  $("status").textContent = "signed out";
  $("status").className = "pill closed";
  const error = $("signin-error");
  error.textContent = message;
  error.hidden = !message;
}

async function refresh() {
  const token = sessionStorage.getItem("jetsock-admin-token");
  if (!token) return signedOut("");
  let response;
  try {
    response = await fetch("/admin/api/state", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch {
    $("status").textContent = "unreachable";
    $("status").className = "pill reconnecting";
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    let message = `refused (${response.status})`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: keep the status
    }
    return signedOut(message);
  }
  if (!response.ok) {
    $("status").textContent = `error ${response.status}`;
    $("status").className = "pill reconnecting";
  } else {
    render(await response.json());
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("status").textContent = "live";
    $("status").className = "pill connected";
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("jetsock-admin-token", $("token").value.trim());
  $("token").value = "";
  previous = null;
  refresh();
});

refresh();
