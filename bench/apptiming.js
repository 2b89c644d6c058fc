// Preloaded into the example Node app by the bench (`node --require bench/apptiming.js app.js`) to split a
// reload into the app's time and the launcher's: it notes, in the app's own clock (unix ms, sub-ms), when
// the process started (performance.timeOrigin, taken as node starts up, a few ms after exec), when it wrote
// READY=1, when SIGTERM arrived and when it exits, and appends one JSON line to $BENCH_APPTIMING at exit.
// It changes nothing in the app's behaviour (same process, so LISTEN_PID still matches).
'use strict';
const fs = require('fs');
const path = process.env.BENCH_APPTIMING;
if (path) {
  const now = () => performance.timeOrigin + performance.now();
  const rec = {
    pid: process.pid,
    generation: parseInt(process.env.BATON_GENERATION || '0', 10),
    worker: parseInt(process.env.BATON_WORKER || '0', 10),
    origin: performance.timeOrigin,
    ready: null, sigterm: null, exit: null,
  };
  const writeSync = fs.writeSync;
  fs.writeSync = function (fd, data, ...rest) {
    if (rec.ready === null && typeof data === 'string' && data.startsWith('READY=1')) rec.ready = now();
    return writeSync.call(this, fd, data, ...rest);
  };
  process.on('SIGTERM', () => { if (rec.sigterm === null) rec.sigterm = now(); });
  process.on('exit', () => {
    rec.exit = now();
    try { fs.appendFileSync(path, JSON.stringify(rec) + '\n'); } catch (_) { /* nothing to do */ }
  });
}
