# git_server.py - a private Git repository host for test_sched_repos.c: git's
# smart HTTP (git http-backend, the CGI git ships) over HTTPS with a
# certificate of the test's CA, in the test's network namespace. Every
# request must carry Basic credentials x-access-token:TOKEN, as a Git host
# takes an access token; without them or with a wrong token: 401 and a Basic
# challenge (so git sends the credentials of its remote URL); the token
# "ghs_readonly" (valid, no access to this repository): 403. The
# Authorization header of every request is appended to LOG.
# Usage: git_server.py PORT CERT KEY ROOT TOKEN LOG READY
import base64
import http.server
import os
import socketserver
import ssl
import subprocess
import sys
import threading

port, cert, key, root, token, log, ready = sys.argv[1:8]
want = "Basic " + base64.b64encode(("x-access-token:" + token).encode()).decode()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def deny(self, code, msg):
        self.send_response(code, msg)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def handle_any(self):
        auth = self.headers.get("Authorization") or ""
        with lock, open(log, "a") as f:
            f.write("%s %s auth=%s\n" % (self.command, self.path, auth))
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        readonly = "Basic " + base64.b64encode(b"x-access-token:ghs_readonly").decode()
        if auth == readonly:
            return self.deny(403, "Forbidden")
        if auth != want:
            return self.deny(401, "Unauthorized")
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type") or "",
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER="x-access-token",
                   REMOTE_ADDR=self.client_address[0],
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding") or "",
                   HTTP_GIT_PROTOCOL=self.headers.get("Git-Protocol") or "")
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = handle_any

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = Server(("0.0.0.0", int(port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(ready, "w").close()
srv.serve_forever()
