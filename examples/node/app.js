#!/usr/bin/env node
// Example HTTP app for baton (plain Node, no npm packages).
//
// What an app has to do to get zero-downtime reloads under baton:
//   1. Serve on the listening sockets baton hands over (fd 3, 4, ...; how many
//      is in LISTEN_FDS) instead of binding a port itself.
//   2. Say when it is ready: with `baton run --ready fd`, write "READY=1\n" to
//      the fd in BATON_NOTIFY_FD once it is listening.
//   3. On SIGTERM, drain: tell keep-alive clients to go away, finish requests in
//      flight, then exit 0. The listening socket stays open in baton and in the
//      new generation, so no connection is refused while this process leaves.
//
// About `--ready notify`: that mode sends "READY=1" as a datagram to the unix
// socket in NOTIFY_SOCKET (systemd's sd_notify protocol). Node's standard
// library cannot send unix datagrams without a native module, so with Node use
// `--ready fd` (supported below) or `--ready listen` (needs no app code).
//
// Run alone:    PORT=8080 node app.js
// Under baton:  baton run --listen :8080 --ready fd --workers 2 -- node app.js
//
// Environment knobs (all optional):
//   APP_VERSION        shown in the response body (default 1.0)
//   WORK_MS            extra time each request takes (a timer; WORK_SPIN=1 burns CPU instead)
//   STARTUP_MS         wait this long before listening (simulates a slow start)
//   APP_BREAK          "start": exit 1 at startup; "hang": never listen, never become ready
//   DRAIN_GRACE_MS     how long to keep serving (with Connection: close) after SIGTERM (default 1000)
//   DRAIN_DEADLINE_MS  hard limit for the whole drain (default 10000)
// A request can ask to be slow: GET /?sleep=500
'use strict';

const http = require('http');
const fs = require('fs');

const env = process.env;
const int = (name, def) => { const v = parseInt(env[name], 10); return Number.isNaN(v) ? def : v; };
const GENERATION = env.BATON_GENERATION || '0';
const WORKER = env.BATON_WORKER || '0';
const VERSION = env.APP_VERSION || '1.0';
const WORK_MS = int('WORK_MS', 0);
const STARTUP_MS = int('STARTUP_MS', 0);
const DRAIN_GRACE_MS = int('DRAIN_GRACE_MS', 1000);
const DRAIN_DEADLINE_MS = int('DRAIN_DEADLINE_MS', 10000);

const log = (msg) => console.log(`[app pid ${process.pid} gen ${GENERATION} worker ${WORKER}] ${msg}`);

// Send a status line to baton (--ready fd). Does nothing when run alone.
function notify(line) {
  if (!env.BATON_NOTIFY_FD) return;
  try {
    fs.writeSync(parseInt(env.BATON_NOTIFY_FD, 10), line + '\n');
  } catch (err) {
    console.error(`could not notify baton: ${err.message}`);
  }
}

// ---- Connection bookkeeping, needed for a clean drain ----
const servers = [];
const conns = new Map(); // socket -> { inFlight: requests not yet answered, idleSince: ms timestamp }
let draining = false;    // SIGTERM received: answer with Connection: close
let stopped = false;     // no longer accepting

function onConnection(socket) {
  conns.set(socket, { inFlight: 0, idleSince: Date.now() });
  socket.on('close', () => { conns.delete(socket); exitIfDrained(); });
}

function onRequest(req, res) {
  const st = conns.get(req.socket);
  st.inFlight++;
  res.on('close', () => { st.inFlight--; st.idleSince = Date.now(); });

  const m = /[?&]sleep=(\d+)/.exec(req.url);
  let delay = m ? parseInt(m[1], 10) : 0;
  if (env.WORK_SPIN === '1') { const end = Date.now() + WORK_MS; while (Date.now() < end); } // burn CPU
  else delay += WORK_MS;

  setTimeout(() => {
    const body = `hello from generation ${GENERATION} worker ${WORKER} pid ${process.pid} version ${VERSION}\n`;
    // Checked when the response is written, so requests that started before
    // SIGTERM also carry it. Node closes the connection after this response.
    if (draining) res.setHeader('Connection', 'close');
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }, delay);
}

function listenTargets() {
  if (!env.LISTEN_FDS) return [{ port: int('PORT', 8080) }];
  // LISTEN_PID says whom the fds are meant for. If it is not us, something
  // (a shell, npm, ...) forked between baton and node: exec node directly.
  if (env.LISTEN_PID && env.LISTEN_PID !== String(process.pid)) {
    console.error(`LISTEN_PID=${env.LISTEN_PID} but our pid is ${process.pid}; start node directly (no wrapper that forks)`);
    process.exit(1);
  }
  const names = (env.LISTEN_FDNAMES || '').split(':');
  return Array.from({ length: parseInt(env.LISTEN_FDS, 10) }, (_, i) => ({ fd: 3 + i, name: names[i] }));
}

function start() {
  if (draining) return; // SIGTERM during startup
  const targets = listenTargets();
  let pending = targets.length;
  for (const target of targets) {
    const server = http.createServer(onRequest);
    server.on('connection', onConnection);
    server.on('error', (err) => { console.error(`listen failed: ${err.message}`); process.exit(1); });
    server.listen(target.fd !== undefined ? { fd: target.fd } : { port: target.port }, () => {
      log(target.fd !== undefined ? `listening on fd ${target.fd} (${target.name || 'unnamed'})` : `listening on port ${target.port}`);
      if (--pending === 0) notify('READY=1');
    });
    servers.push(server);
  }
}

// ---- Graceful drain ----
// Why not simply server.close() on SIGTERM? An idle keep-alive connection can
// be closed at the very moment the client sends its next request on it; the
// client then sees a reset or an empty reply for a request it had every right
// to send, and it cannot know whether it is safe to retry. Since Node 19,
// server.close() closes idle keep-alive connections at once (as does
// server.closeIdleConnections()), so calling it right away has exactly this
// race. So we:
//   1. keep serving for DRAIN_GRACE_MS, but every response says
//      "Connection: close" so active keep-alive clients hang up themselves and
//      reconnect (to the new generation, which shares the listening socket);
//   2. then stop accepting, and close a connection only once it has had
//      nothing in flight for DRAIN_GRACE_MS (a silent client is unlikely to
//      be sending right now); requests in flight finish normally;
//   3. exit 0 once no connection is left, or at DRAIN_DEADLINE_MS at the latest.
function drain(signal) {
  if (draining) return;
  draining = true;
  log(`${signal}: draining ${conns.size} connections (grace ${DRAIN_GRACE_MS} ms, deadline ${DRAIN_DEADLINE_MS} ms)`);
  notify('STOPPING=1');
  if (servers.length === 0) process.exit(0); // still starting up: nothing to drain
  setTimeout(() => {
    log(`drain deadline reached, exiting with ${conns.size} connections still open`);
    process.exit(0);
  }, DRAIN_DEADLINE_MS);
  setTimeout(() => {
    // Stop accepting. (On Node >= 19 this also closes idle keep-alive
    // connections; after the grace period those are the ones that stayed
    // silent throughout, which is what closeIdle() does anyway, also on
    // older Node, and for connections that never sent a request.)
    for (const server of servers) server.close();
    stopped = true;
    closeIdle();
    setInterval(closeIdle, 100);
  }, DRAIN_GRACE_MS);
}

function closeIdle() {
  const now = Date.now();
  for (const [socket, st] of conns) {
    if (st.inFlight === 0 && now - st.idleSince >= DRAIN_GRACE_MS) socket.destroy();
  }
  exitIfDrained();
}

function exitIfDrained() {
  if (stopped && conns.size === 0) {
    log('drained, exiting');
    process.exit(0);
  }
}

// ---- Main ----
if (env.APP_BREAK === 'start') {
  console.error('APP_BREAK=start: failing at startup on purpose');
  process.exit(1);
} else if (env.APP_BREAK === 'hang') {
  log('APP_BREAK=hang: never listening, never ready');
  setInterval(() => {}, 1 << 30);
} else {
  process.on('SIGTERM', () => drain('SIGTERM'));
  process.on('SIGINT', () => drain('SIGINT'));
  setTimeout(start, STARTUP_MS);
}
