// The seeds' app, as a new user brings it: it binds its own port and knows nothing of baton. Like most apps
// it closes its server on SIGTERM (a process that simply dies loses the requests it is serving, in any launcher).
const http = require('http');
const server = http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`);
});
server.listen(Number(process.env.PORT || 8000));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
