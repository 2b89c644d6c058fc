// Node's http server as its documentation shows it, on the socket baton passes: graceful stop is server.close().
const http = require('http');
const generation = process.env.BATON_GENERATION || '?';
const server = http.createServer((req, res) => res.end(`hello from generation ${generation} pid ${process.pid}\n`));
server.listen({ fd: 3 });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
