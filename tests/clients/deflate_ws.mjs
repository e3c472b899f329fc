// Node's `ws` client (clients/js/node_modules, perMessageDeflate on: its default) against a real
// edge, run by tests/clients/test_deflate_clients.py with JETSOCK_TEST_URL, JETSOCK_TEST_TOKEN,
// JETSOCK_TEST_ROOM and JETSOCK_TEST_DATA (the JSON to publish). It joins the room, publishes the
// data (over ws's 1 KiB threshold, so compressed), and prints one JSON line: the answer's
// Sec-WebSocket-Extensions, what ws negotiated, the ack, and the room message it got back.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const WebSocket = createRequire(fileURLToPath(new URL("../../clients/js/", import.meta.url)))("ws");
const { JETSOCK_TEST_URL: url, JETSOCK_TEST_TOKEN: token, JETSOCK_TEST_ROOM: room, JETSOCK_TEST_DATA: data } =
  process.env;
const result = { answer: null, negotiated: null, ack: null, msg: null };
const ws = new WebSocket(url, ["jetsock.v1", `bearer.${token}`]);
const timer = setTimeout(() => {
  console.log(JSON.stringify({ ...result, error: "timed out" }));
  process.exit(1);
}, 15000);
ws.on("upgrade", (response) => {
  result.answer = response.headers["sec-websocket-extensions"] ?? null;
});
ws.on("message", (raw) => {
  const frame = JSON.parse(raw.toString());
  if (frame.type === "welcome") {
    result.negotiated = ws.extensions;
    ws.send(JSON.stringify({ type: "join", room }));
  } else if (frame.type === "joined") {
    ws.send(JSON.stringify({ type: "publish", room, data: JSON.parse(data), ref: "node" }));
  } else if (frame.type === "ack") {
    result.ack = frame;
  } else if (frame.type === "msg") {
    result.msg = frame;
  }
  if (result.ack && result.msg) {
    clearTimeout(timer);
    console.log(JSON.stringify(result));
    ws.close(1000);
  }
});
ws.on("error", (err) => {
  console.log(JSON.stringify({ ...result, error: String(err) }));
  process.exit(1);
});
