# The plainest server there is: one blocking accept() loop, one connection at a time. It relies on
# its listening socket being blocking, which under --adopt-binds the library emulates even when
# another generation (Node.js, nginx) has made the shared socket non-blocking.
# For tests/integration/test_adopt.cpp.
#
#   python3 blocking-server.py PORT VERSION
#
# Any request -> "version=VERSION pid=PID\n", then the connection is closed.
import os
import socket
import sys

port, version = int(sys.argv[1]), sys.argv[2]
body = f"version={version} pid={os.getpid()}\n".encode()
answer = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(64)
while True:
    conn, _ = server.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        if request:
            conn.sendall(answer)
