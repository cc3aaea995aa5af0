# A Python HTTP server that asks for SO_REUSEPORT before it binds its own port, as servers that
# run one listener per thread or process do. For tests/integration/test_adopt.cpp.
#
#   python3 reuseport-server.py PORT VERSION
#
# GET / -> "version=VERSION pid=PID\n"
import http.server
import os
import socket
import socketserver
import sys

port, version = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"version={version} pid={os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Server(("127.0.0.1", port), Handler).serve_forever()
