# A Python HTTP server that asks for SO_REUSEPORT before it binds its own port, as servers that
# run one listener per thread or process do. For tests/integration/test_adopt.cpp.
#
#   python3 reuseport-server.py PORT VERSION [URG_FILE]
#
# GET / -> "version=VERSION pid=PID\n"
# With URG_FILE, it also handles SIGURG itself, by writing that file.
import http.server
import os
import signal
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


if len(sys.argv) > 3:
    urg_file = sys.argv[3]

    def on_urg(signo, frame):
        with open(urg_file, "w") as f:
            f.write("SIGURG\n")

    signal.signal(signal.SIGURG, on_urg)

Server(("127.0.0.1", port), Handler).serve_forever()
