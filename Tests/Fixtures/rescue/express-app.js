// express 4 (Debian's node-express), unmodified: it listens on its own port, which baton serves (bind adoption).
const express = require('express');
const generation = process.env.BATON_GENERATION || '?';
const app = express();
// GET /?sleep=MS answers after MS milliseconds.
app.get('/', (req, res) => setTimeout(() => res.send(`hello from generation ${generation} pid ${process.pid}\n`),
  Math.min(Number(req.query.sleep) || 0, 10000)));
const server = app.listen(Number(process.env.PORT));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
