"""A Server-Sent Events backend (Python standard library) on a free loopback port; prints the
port. Every GET is answered with 5 events `data: N`, one each 300 ms, each flushed in its own
chunk."""

import http.server
import time


class Events(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(5):
            if i:
                time.sleep(0.3)
            event = f"data: {i}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Events)
print(server.server_address[1], flush=True)
server.serve_forever()
