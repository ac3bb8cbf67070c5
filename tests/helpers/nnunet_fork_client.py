"""``python nnunet_fork_client.py SOCKET TOOL ARGS...``: runs nnU-Net console script TOOL through the fork
server listening on SOCKET (see nnunet_fork_server.py) with this process's environment, working folder and
standard streams, and exits with its exit code (128 + the signal's number when a signal ended it).
Standard library only, so it starts in milliseconds."""
import json
import os
import socket
import sys


def main() -> int:
    path, argv = sys.argv[1], sys.argv[2:]
    request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError as e:
            print(f"nnunet_fork_client: no fork server at {path} ({e.strerror}); {argv[0]} not run", file=sys.stderr)
            return 1
        socket.send_fds(connection, [request], [0, 1, 2])
        connection.shutdown(socket.SHUT_WR)  # the request ends here
        reply = b""
        while chunk := connection.recv(4096):
            reply += chunk
    if not reply:
        print(f"nnunet_fork_client: the server at {path} ended without running {argv[0]}", file=sys.stderr)
        return 1
    code = json.loads(reply)["exit_code"]
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
