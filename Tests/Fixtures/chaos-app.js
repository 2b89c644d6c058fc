// The example Node app, with a behaviour read from BEHAVIOUR_FILE at start, so that a reload can bring a broken
// release: ok | crash (exits 1 at start) | hang (never becomes ready) | hang-after-ready (pings baton's watchdog,
// then worker 1 freezes its event loop once; the marker file BEHAVIOUR_FILE.hung gets its pid) | fail-once-sibling-serves
// (worker 1 serves; worker 2 fails once worker 1 has a slow request in flight) | fail-after-ready (1 s after it is
// ready, each worker finds it is broken: it drains like at SIGTERM, answering what it accepted, then exits 3) |
// helper-fails (each worker starts a helper through `sh -c '(...) &'`: re-parented to baton in the worker's process
// group, it exits 5 after 1.5 s while the worker serves on) | health-503 | health-503-later | health-trigger |
// health-unserved (baton's probe socket answers 503: always, from 1.5 s after start, once BEHAVIOUR_FILE.unhealthy
// holds the worker's pid; or it is not served).
'use strict';
const fs = require('fs');
const file = process.env.BEHAVIOUR_FILE;
const behaviour = file && fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : 'ok';
if (behaviour === 'crash') process.env.APP_BREAK = 'start';
if (behaviour === 'hang') process.env.APP_BREAK = 'hang';
if (behaviour === 'hang-after-ready') {
  const notify = Number(process.env.BATON_NOTIFY_FD);
  const every = Number(process.env.WATCHDOG_USEC) / 2000;
  const ping = setInterval(() => fs.writeSync(notify, 'WATCHDOG=1\n'), every);
  const marker = file + '.hung';
  if (process.env.BATON_WORKER === '1' && !fs.existsSync(marker)) {
    setTimeout(() => {
      clearInterval(ping);
      fs.writeFileSync(marker, String(process.pid));
      console.log(`freezing now, pid ${process.pid}`);
      for (;;) {} // hung: no more pings, no more requests served
    }, 1500);
  }
}
if (behaviour === 'fail-once-sibling-serves') {
  // Worker 1 of the release starts as usual and marks the first slow request it accepts; worker 2 waits for that
  // mark, then fails its start, so that the rollback happens while worker 1 has a request in flight.
  const path = require('path');
  const marker = `${file}.serving.${process.env.BATON_GENERATION}`;
  if (process.env.BATON_WORKER === '1') {
    const http = require('http');
    const emit = http.Server.prototype.emit;
    http.Server.prototype.emit = function (event, request, ...rest) {
      if (event === 'request' && /sleep=/.test(request.url) && !fs.existsSync(marker)) fs.writeFileSync(marker, String(process.pid));
      return emit.call(this, event, request, ...rest);
    };
  } else {
    const fail = () => {
      if (!fs.existsSync(marker)) return;
      console.error(`worker ${process.env.BATON_WORKER}: failing while worker 1 serves (test)`);
      process.exit(1);
    };
    fs.watch(path.dirname(file), fail);
    fail();
    setInterval(() => {}, 1 << 30); // stays up, never ready, until the mark appears
  }
}
if (behaviour === 'fail-after-ready') {
  const exit = process.exit;
  process.exit = (code) => exit(code || 3);
  setTimeout(() => {
    console.error(`worker ${process.env.BATON_WORKER}: broken after all, draining and exiting 3 (test)`);
    process.emit('SIGTERM');
  }, 1000);
}
if (behaviour === 'helper-fails') {
  require('child_process').spawn('sh', ['-c', '(sleep 1.5; exit 5) &'], { stdio: 'ignore' });
}
if (behaviour === 'health-503' || behaviour === 'health-trigger' || behaviour === 'health-503-later') {
  // baton's probe socket (the listener named health, at BATON_HEALTH_ADDRESS) answers 503: always, or once the file
  // BEHAVIOUR_FILE.unhealthy holds this worker's pid. The shared listener serves as usual.
  const http = require('http');
  const port = Number((process.env.BATON_HEALTH_ADDRESS || '').split(':').pop());
  const marker = `${file}.unhealthy`;
  const started = Date.now();
  const sick = () => behaviour === 'health-503' || (behaviour === 'health-503-later' && Date.now() - started > 1500) || (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8').trim() === String(process.pid));
  const emit = http.Server.prototype.emit;
  http.Server.prototype.emit = function (event, request, response, ...rest) {
    if (event === 'request' && request.socket.localPort === port && sick()) {
      response.writeHead(503, { 'Content-Type': 'text/plain', Connection: 'close' });
      response.end('unhealthy (test)\n');
      return true;
    }
    return emit.call(this, event, request, response, ...rest);
  };
}
if (behaviour === 'health-unserved') {
  // An app that serves only the sockets it knows of, not the probe socket baton appends (the last of LISTEN_FDS).
  process.env.LISTEN_FDS = String(Number(process.env.LISTEN_FDS) - 1);
}
if (behaviour !== 'fail-once-sibling-serves' || process.env.BATON_WORKER === '1') require('../../examples/node/app.js');
