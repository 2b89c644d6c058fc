// myapp's entry point, installed as /usr/lib/myapp/app.js and run by baton as
// `node /usr/lib/myapp/app.js` (see debian/myapp.service).
//
// A reload does not change the service's Environment=, so whatever must differ
// between two versions of the app has to be in the files on disk. Here that is
// the version: debian/rules writes the package version into VERSION, and this
// file hands it to the server (server.js, a copy of examples/node/app.js).
'use strict';

const fs = require('fs');
const path = require('path');

process.env.APP_VERSION = fs.readFileSync(path.join(__dirname, 'VERSION'), 'utf8').trim();
require('./server.js');
