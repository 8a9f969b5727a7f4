"""Peers for cli/tests/observe_flows.rs that std Rust cannot play.

  python3 peers.py reset HOST:PORT   connect, send 'ping', read it back, then close with a
                                     reset (SO_LINGER 0); prints the client address
  python3 peers.py deaf              a listening socket whose accept queue is full (listen(0),
                                     filled by its own connections, never accepted): further
                                     SYNs are dropped, so connects time out; prints the port,
                                     then waits until stdin closes
"""
import socket
import struct
import sys


def reset(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    print(f"{s.getsockname()[0]}:{s.getsockname()[1]}", flush=True)
    s.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = s.recv(4 - len(got))
        if not chunk:
            break
        got += chunk
    if got != b"ping":
        sys.exit(f"echo gave {got!r}")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def deaf():
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(0)
    port = l.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    print(port, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1] == "reset":
        reset(sys.argv[2])
    else:
        deaf()
