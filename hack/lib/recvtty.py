#!/usr/bin/env python3
"""recvtty: receive a container's console master over a unix socket.

A stand-in for runc's contrib/cmd/recvtty (Go, not built here), with its
command line: `recvtty [--mode single|null] [--pid-file F] [--no-stdin] SOCK`.
runc's integration suite (hack/runc-suite) starts it as $RECVTTY.

- single: accept one connection, take the pty master it carries
  (SCM_RIGHTS), clear ONLCR as runc's does, copy master -> stdout (and
  stdin -> master unless --no-stdin) until the pty closes; then exit.
- null: accept connections forever; drain every master into nothing.
"""
import argparse
import os
import socket
import sys
import termios
import threading


def recv_master(conn):
    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise SystemExit("[recvtty] fatal error: no file descriptor received")
    return fds[0]


def copy(src, dst):
    try:
        while True:
            b = os.read(src, 65536)
            if not b:
                return
            if dst is not None:
                os.write(dst, b)
    except OSError:
        return


def single(path, no_stdin):
    ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ln.bind(path)
    ln.listen(1)
    conn, _ = ln.accept()
    ln.close()
    master = recv_master(conn)
    attrs = termios.tcgetattr(master)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(master, termios.TCSANOW, attrs)
    if not no_stdin:
        threading.Thread(target=copy, args=(0, master), daemon=True).start()
    copy(master, 1)


def null(path):
    ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ln.bind(path)
    ln.listen(16)
    while True:
        conn, _ = ln.accept()

        def drain(c=conn):
            try:
                m = recv_master(c)
            except (OSError, SystemExit):
                return
            finally:
                c.close()
            copy(m, None)
            os.close(m)

        threading.Thread(target=drain, daemon=True).start()


def main():
    p = argparse.ArgumentParser(prog="recvtty")
    p.add_argument("--mode", "-m", default="single", choices=["single", "null"])
    p.add_argument("--pid-file")
    p.add_argument("--no-stdin", action="store_true")
    p.add_argument("socket")
    a = p.parse_args()
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(str(os.getpid()))
    if a.mode == "single":
        single(a.socket, a.no_stdin)
    else:
        null(a.socket)


if __name__ == "__main__":
    main()
