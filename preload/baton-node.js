// baton-node.js: makes Node's own graceful stop, server.close(), drain keep-alive connections, unchanged apps.
//
// baton adds `--require` of this file to its workers' NODE_OPTIONS (after whatever the app already has there) while
// the connection rescue is on. Node's server.close() closes the connections that are idle at that moment and then
// waits for the others to close, which under keep-alive load they never do: every response keeps its connection
// open, so the old worker serves on until its stop timeout kills it, taking the requests it had read with it.
// Here, once close() was called on an HTTP or HTTPS server, each response that has not sent its headers yet says
// `Connection: close`, so Node closes the connection after it and the client reconnects to the serving generation.
// Connections idle at close() are closed by Node as before; baton's connection rescue covers a request that was on
// its way on one of them. Nothing else changes: no timer, no other module touched, nothing done before close().
'use strict';
const http = require('http');
const https = require('https');

const closing = Symbol('baton: close() was called');

function markClosing(Server) {
  const close = Server.prototype.close;
  if (typeof close !== 'function' || close[closing]) return;
  const wrapped = function (...args) {
    this[closing] = true;
    return close.apply(this, args);
  };
  wrapped[closing] = true;
  Server.prototype.close = wrapped;
}
markClosing(http.Server);
markClosing(https.Server);

const writeHead = http.ServerResponse.prototype.writeHead;
http.ServerResponse.prototype.writeHead = function (...args) {
  const server = this.socket && this.socket.server;
  if (server && server[closing] && !this.headersSent) this.shouldKeepAlive = false;
  return writeHead.apply(this, args);
};
