#!/usr/bin/env node
// Peer "cluster": Node's built-in cluster module with a SIGUSR2 rolling restart, the way the common
// articles and answers show it.
//
//   WORKERS=4 PORT=8080 node cluster.js path/to/app.js
//
// The primary forks WORKERS workers running the app (which listens on PORT; the cluster module makes
// the primary own the socket and hand connections to the workers round-robin). On SIGUSR2 it replaces
// the workers one at a time: fork the new one, wait for its 'listening' event, then disconnect() the old
// one (which closes its servers and lets it exit once its connections are gone), kill it if it has not
// exited after KILL_TIMEOUT_MS, and go on with the next one when it has exited. Each finished restart
// appends {"event":"reloaded","start":t,"end":t} (unix seconds) to the file in BENCH_EVENTS.
// SIGTERM: SIGTERM every worker (the app drains), exit when they are gone.
'use strict';
const cluster = require('cluster');
const fs = require('fs');

const app = process.argv[2];
const N = parseInt(process.env.WORKERS || '1', 10);
const KILL_TIMEOUT_MS = parseInt(process.env.KILL_TIMEOUT_MS || '10000', 10);
const events = process.env.BENCH_EVENTS;

cluster.setupPrimary({ exec: app });
for (let i = 0; i < N; i++) cluster.fork();

let restarting = false;
let again = false;

function restart() {
  if (restarting) { again = true; return; }
  restarting = true;
  const start = Date.now() / 1000;
  const old = Object.values(cluster.workers);
  const step = (i) => {
    if (i >= old.length) {
      if (events) fs.appendFileSync(events, JSON.stringify({ event: 'reloaded', start, end: Date.now() / 1000 }) + '\n');
      restarting = false;
      if (again) { again = false; restart(); }
      return;
    }
    const fresh = cluster.fork();
    fresh.once('listening', () => {
      const worker = old[i];
      const timer = setTimeout(() => worker.kill('SIGKILL'), KILL_TIMEOUT_MS);
      worker.once('exit', () => { clearTimeout(timer); step(i + 1); });
      worker.disconnect();
    });
  };
  step(0);
}

process.on('SIGUSR2', restart);
process.on('SIGTERM', () => {
  cluster.removeAllListeners('exit');
  const live = Object.values(cluster.workers);
  if (live.length === 0) process.exit(0);
  let left = live.length;
  for (const w of live) {
    w.once('exit', () => { if (--left === 0) process.exit(0); });
    w.process.kill('SIGTERM');
  }
});
