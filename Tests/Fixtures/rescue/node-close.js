// Node's http server as its documentation shows it, on the socket baton passes: graceful stop is server.close().
const http = require('http');
const generation = process.env.BATON_GENERATION || '?';
// GET /?sleep=MS answers after MS milliseconds.
const delay = (req) => Math.min(Number((/[?&]sleep=(\d+)/.exec(req.url) || [])[1] || 0), 10000);
const server = http.createServer((req, res) =>
  setTimeout(() => res.end(`hello from generation ${generation} pid ${process.pid}\n`), delay(req)));
server.listen({ fd: 3 });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
