// A Node app that listens on a unix socket path of its own choosing and closes its server on SIGTERM, when libuv
// unlinks the socket file it bound.
const http = require('http');
const server = http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`);
}).listen(process.env.SOCKET_PATH);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
