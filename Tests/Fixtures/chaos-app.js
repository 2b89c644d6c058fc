// The example Node app, with a behaviour read from BEHAVIOUR_FILE at start, so that a reload can bring a broken
// release: ok | crash (exits 1 at start) | hang (never becomes ready).
'use strict';
const fs = require('fs');
const file = process.env.BEHAVIOUR_FILE;
const behaviour = file && fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : 'ok';
if (behaviour === 'crash') process.env.APP_BREAK = 'start';
if (behaviour === 'hang') process.env.APP_BREAK = 'hang';
require('../../examples/node/app.js');
