// The bench's Node peer (issue 19): socket.io 4 deployed as a Node team would for the same job.
//
// The cluster module forks WORKERS workers that share the port, round robin (no sticky
// sessions: WebSocket transport only, so a connection never spans workers); the redis
// adapter shares rooms between them, and backends emit through redis in the adapter's own
// wire format (bench/systems.py, NodeSocketIO.publish: what @socket.io/redis-emitter sends).
// The same JWT as jetsock's (HS256 with exp and sub, jsonwebtoken) in the handshake's `auth`,
// the same events as the python-socketio peer (bench/peer_socketio.py): `join` and `publish`,
// each acknowledged with true; a publish is emitted to its room as `msg`.
//
// Settings come from the environment: PORT, HOST, REDIS_URL, SECRET, WORKERS, RESTART_PAUSE
// (seconds before a dead worker is replaced, the same pause as every system's).
"use strict";

const cluster = require("node:cluster");
const http = require("node:http");

const env = process.env;
const WORKERS = Number(env.WORKERS || 2);
const RESTART_PAUSE_MS = Number(env.RESTART_PAUSE || 1) * 1000;

if (cluster.isPrimary) {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  let stopping = false;
  const fork = () => cluster.fork();
  for (let i = 0; i < WORKERS; i++) fork();
  cluster.on("exit", () => {
    if (!stopping) setTimeout(() => stopping || fork(), RESTART_PAUSE_MS);
  });
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill("SIGTERM");
    setTimeout(() => process.exit(0), 2000).unref();
    cluster.on("exit", () => {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
    });
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  const { Server } = require("socket.io");
  const { createAdapter } = require("@socket.io/redis-adapter");
  const { createClient } = require("redis");
  const jwt = require("jsonwebtoken");

  const pub = createClient({ url: env.REDIS_URL });
  const sub = pub.duplicate();
  Promise.all([pub.connect(), sub.connect()]).then(() => {
    const server = http.createServer();
    const io = new Server(server, {
      transports: ["websocket"],
      serveClient: false,
      pingInterval: 25000,
      pingTimeout: 20000,
      adapter: createAdapter(pub, sub),
    });
    io.use((socket, next) => {
      const token = (socket.handshake.auth || {}).token || "";
      try {
        const claims = jwt.verify(token, env.SECRET, { algorithms: ["HS256"] });
        if (claims.exp === undefined || claims.sub === undefined) throw new Error("exp and sub are required");
        next();
      } catch (_error) {
        next(new Error("unauthorized"));
      }
    });
    io.on("connection", (socket) => {
      socket.on("join", (room, ack) => {
        socket.join(room);
        if (typeof ack === "function") ack(true);
      });
      socket.on("publish", (message, ack) => {
        io.to(message.room).emit("msg", message);
        if (typeof ack === "function") ack(true);
      });
    });
    server.listen(Number(env.PORT), env.HOST || "127.0.0.1", 4096);
    process.on("SIGTERM", () => process.exit(0));
  });
}
