// The seeds' app, as a new user brings it: it binds its own port and knows nothing of baton, not even SIGTERM.
const http = require('http');
http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`);
}).listen(Number(process.env.PORT || 8000));
