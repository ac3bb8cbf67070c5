"""nnU-Net's console scripts for the tests, each run in a process forked from one that has imported nnU-Net.

A fresh ``nnUNetv2_train`` spends about 6 s of CPU importing torch, nnU-Net and its trainer variants before it
reads its arguments, and the end-to-end tests run some fifty such commands. :class:`NnunetForkServer`
starts one server process that imports them once (with the environment of the commands, so that nnU-Net's
import-time setting ``nnUNet_def_n_proc`` is theirs), and :meth:`NnunetForkServer.command` gives the
command line that runs a console script through it: a stdlib-only client (``nnunet_fork_client.py``,
started in milliseconds) hands the server its argv, environment, working folder, stdin, stdout and stderr;
the server forks, and the child replaces its environment, folder and standard streams with the client's
and calls the console script's entry point (``console_scripts`` metadata, as the installed script does),
exiting as that script would (its exit code, or a traceback and 1). The client exits with the child's
code. nnU-Net 2.8.1 reads its paths from the environment when it uses them (``nnunetv2.paths``), so each
command sees its own. One command runs at a time per server.

Run as a script it is the server: ``python nnunet_fork_server.py SOCKET`` (it stops when its stdin closes).
"""
from __future__ import annotations

import gc
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT = Path(__file__).with_name("nnunet_fork_client.py")
# the console scripts the tests run; their modules (and nnU-Net's trainer variants) are imported once
TOOLS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess",
         "nnUNetv2_train", "nnUNetv2_predict")


class NnunetForkServer:
    """The server process for commands with environment ``env``; ``close()`` (or leaving ``with``) stops it."""

    def __init__(self, env: dict[str, str]):
        self._folder = tempfile.mkdtemp(prefix="nnunet-fork-")
        self.socket = os.path.join(self._folder, "server.sock")
        self._process = subprocess.Popen([sys.executable, __file__, self.socket], env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        if "ready\n" not in iter(self._process.stdout.readline, ""):
            self.close()
            raise RuntimeError(f"the nnU-Net fork server did not start (exit code {self._process.returncode})")

    def command(self, tool: str, *args: str) -> list[str]:
        """The command line that runs console script ``tool`` with ``args`` through this server."""
        return [sys.executable, str(CLIENT), self.socket, tool, *args]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> NnunetForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name in TOOLS}


def _preload(entry_points: dict) -> None:
    from os.path import join

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    import nnunet_covid.training  # noqa: F401  (what nnUNet_extTrainer's shim module re-exports)

    for ep in entry_points.values():
        ep.load()
    # imports every trainer variant of nnU-Net's own folder, as each trainer lookup does first
    recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), "_NoSuchTrainer",
                                "nnunetv2.training.nnUNetTrainer", nnunetv2.__path__[0])


def _serve(path: str):
    """Serves until stdin closes; in each forked child, returns what the console script's entry point returns."""
    entry_points = _entry_points()
    _preload(entry_points)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    gc.freeze()  # the children share the preloaded objects' pages: their collections leave them alone
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in readable:
            return 0
        connection, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
        while chunk := connection.recv(1 << 16):  # the rest of the request, up to the client's end of it
            message += chunk
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:  # the command: the client's streams, environment and folder, then the console script
            server.close()
            connection.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            sys.argv = request["argv"]
            return entry_points[request["argv"][0]].load()()
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        connection.sendall(json.dumps({"exit_code": os.waitstatus_to_exitcode(status)}).encode())
        connection.close()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
