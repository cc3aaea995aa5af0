# A WSGI application for gunicorn, which takes its listening sockets from systemd socket
# activation (LISTEN_FDS) by itself. For tests/integration/test_adopt.cpp.
#
#   gunicorn --chdir tests/third-party --env HELLO_VERSION=v1 wsgi_hello:app
#
# GET / -> "version=HELLO_VERSION pid=PID\n"
import os


def app(environ, start_response):
    body = f"version={os.environ.get('HELLO_VERSION', 'v1')} pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
