// The example Node app, with a behaviour read from BEHAVIOUR_FILE at start, so that a reload can bring a broken
// release: ok | crash (exits 1 at start) | hang (never becomes ready) | hang-after-ready (pings baton's watchdog,
// then worker 1 freezes its event loop once; the marker file BEHAVIOUR_FILE.hung gets its pid).
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
require('../../examples/node/app.js');
