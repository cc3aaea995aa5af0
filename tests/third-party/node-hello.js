// A plain Node.js HTTP server that knows nothing of hotrestart: it binds its own port and has no
// signal handler, so SIGTERM ends it at once. For tests/integration/test_adopt.cpp.
//
//   node node-hello.js PORT VERSION
//
// GET /      -> "version=VERSION pid=PID\n"
// GET /slow  -> the same, one second later
'use strict';
const http = require('http');
const port = Number(process.argv[2]);
const version = process.argv[3] || 'v1';
http
  .createServer((req, res) => {
    const body = `version=${version} pid=${process.pid}\n`;
    if (req.url === '/slow') {
      setTimeout(() => res.end(body), 1000);
      return;
    }
    res.end(body);
  })
  .listen(port, '127.0.0.1');
