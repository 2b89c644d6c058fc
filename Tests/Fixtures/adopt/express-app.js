// An express app that binds its own port: app.listen(8000). Debian's node-express: NODE_PATH=/usr/share/nodejs.
const express = require('express');
const app = express();
app.get('/', (req, res) => res.send(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`));
app.listen(Number(process.env.PORT || 8000));
