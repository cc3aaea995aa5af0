// A plain Node.js HTTP server that knows nothing of hotrestart: it binds its own port and has no
// signal handler, so SIGTERM ends it at once. For tests/integration/test_adopt.cpp.
//
//   node node-hello.js PORT VERSION [HOST]
//
// HOST: the address to bind (default 127.0.0.1); "any" binds as Node does when given none (the IPv6
// wildcard, dual stack).
//
// GET /      -> "version=VERSION pid=PID\n"
// GET /slow  -> the same, one second later
'use strict';
const http = require('http');
const port = Number(process.argv[2]);
const version = process.argv[3] || 'v1';
const host = process.argv[4] || '127.0.0.1';
const server = http
  .createServer((req, res) => {
    const body = `version=${version} pid=${process.pid}\n`;
    if (req.url === '/slow') {
      setTimeout(() => res.end(body), 1000);
      return;
    }
    res.end(body);
  });
if (host === 'any') server.listen(port);
else server.listen(port, host);
