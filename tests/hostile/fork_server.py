"""Hostile: looks for a way back to the grader's fork server, which forked this child with numpy loaded.

reach(): every open file descriptor beyond stdin/stdout/stderr, by kind; on each socket among them it
sends the server's own request (b"spawn", with its own pipes as the fds) and says what came back.
Any socket here would be the server's request socket or another child's control socket."""

import array
import os
import socket
import stat


def reach():
    found = {}
    for fd in range(3, 4096):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        kind = "socket" if stat.S_ISSOCK(mode) else "pipe" if stat.S_ISFIFO(mode) else stat.filemode(mode)
        found[fd] = kind
        if kind == "socket":
            s = socket.socket(fileno=os.dup(fd))
            try:
                fds = array.array("i", [1, 2, 3, 4, 1, 1, 1])
                s.sendmsg([b"spawn"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                found[fd] += f": sent a spawn request, got {s.recv(256)!r}"
            except OSError as e:
                found[fd] += f": {type(e).__name__}"
            finally:
                s.close()
    return {str(fd): kind for fd, kind in found.items()}
