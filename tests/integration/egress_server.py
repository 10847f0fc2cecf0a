# egress_server.py - "the internet" for test_egress.c: an HTTPS server (a
# certificate of the test's own CA) and a plain HTTP one, in the test's
# network namespace. Every request that arrives is appended to LOG, raw
# (request line, headers, body), so the test sees exactly what the egress
# proxy sent. Usage: egress_server.py HTTPS_PORT HTTP_PORT CERT KEY LOG READY
import http.server
import socketserver
import ssl
import sys
import threading

https_port, http_port, cert, key, log, ready = sys.argv[1:7]
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with lock, open(log, "ab") as f:
            f.write(b"=== " + self.requestline.encode() + b"\n")
            f.write(bytes(self.headers))
            f.write(body + b"\n")
        out = b"ok\n"
        size = len(out)
        if self.path.startswith("/big/"):  # a large answer, for the proxy's back-pressure
            size = int(self.path.split("/")[2])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        if self.path != "/keepalive":  # a server that does not say it closes
            self.send_header("Connection", "close")
        self.end_headers()
        if size == len(out):
            self.wfile.write(out)
            return
        chunk = b"x" * 65536
        while size > 0:
            self.wfile.write(chunk[:size])
            size -= min(size, len(chunk))

    do_GET = do_POST = do_PUT = handle_any

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


tls = Server(("0.0.0.0", int(https_port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
plain = Server(("0.0.0.0", int(http_port)), Handler)
threading.Thread(target=plain.serve_forever, daemon=True).start()
open(ready, "w").close()
tls.serve_forever()
