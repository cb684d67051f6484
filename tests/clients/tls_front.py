"""A TLS front for the Elasticsearch stand-in (which speaks plain HTTP), with a certificate for
127.0.0.1 from a throwaway CA made by trustme. The CA's PEM goes to --ca-out: a client trusts the
front only if it is given that CA. Requests are forwarded to --upstream as they came."""

import argparse
import http.server
import ssl
import urllib.error
import urllib.request

import trustme


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--ca-out", required=True)
    args = p.parse_args()

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            req = urllib.request.Request(args.upstream + self.path, data=body, method=self.command)
            if self.headers.get("content-type"):
                req.add_header("content-type", self.headers["content-type"])
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    status, data, ctype = resp.status, resp.read(), resp.headers.get("content-type")
            except urllib.error.HTTPError as e:
                status, data, ctype = e.code, e.read(), e.headers.get("content-type")
            self.send_response(status)
            self.send_header("content-type", ctype or "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = forward

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Forward)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    # Written last: its presence means the front is about to accept.
    ca.cert_pem.write_to_path(args.ca_out)
    server.serve_forever()


if __name__ == "__main__":
    main()
