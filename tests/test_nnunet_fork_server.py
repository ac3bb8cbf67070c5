"""The fork server that runs the end-to-end tests' nnU-Net commands (tests/helpers/nnunet_fork_server.py) runs them
as the installed console scripts would: the client's argv, environment and streams, and its exit code; a
closed server runs nothing and says so in one line."""
import os
import subprocess

from helpers.nnunet_fork_server import NnunetForkServer


def test_commands_get_the_clients_arguments_environment_streams_and_exit_code(tmp_path):
    server_env = {**os.environ, "nnUNet_raw": str(tmp_path / "server_raw"), "nnUNet_def_n_proc": "1",
                  "nnUNet_preprocessed": str(tmp_path / "server_preprocessed"), "OMP_NUM_THREADS": "1"}
    client_env = {**server_env, "nnUNet_preprocessed": str(tmp_path / "client_preprocessed")}
    with NnunetForkServer(server_env) as server:
        usage = subprocess.run(server.command("nnUNetv2_predict", "-h"), env=client_env, capture_output=True,
                               text=True, timeout=120)
        assert usage.returncode == 0 and "usage: nnUNetv2_predict" in usage.stdout

        # an unknown dataset: nnU-Net's own error names the folders it looked in, read from the client's environment
        missing = subprocess.run(server.command("nnUNetv2_train", "999", "3d_fullres", "0", "-device", "cpu"),
                                 env=client_env, capture_output=True, text=True, timeout=120)
        assert missing.returncode == 1
        assert f"nnUNet_preprocessed={tmp_path / 'client_preprocessed'}" in missing.stderr
        assert "Traceback" in missing.stderr and "RuntimeError" in missing.stderr

        bad_flag = subprocess.run(server.command("nnUNetv2_train", "999", "3d_fullres", "0", "--no-such-flag"), env=client_env,
                                  capture_output=True, text=True, timeout=120)
        assert bad_flag.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad_flag.stderr

    # once the server is closed, its commands fail with one line instead of running anything
    closed = subprocess.run(server.command("nnUNetv2_predict", "-h"), env=client_env, capture_output=True, text=True,
                            timeout=60)
    assert closed.returncode == 1
    assert closed.stderr.strip().splitlines() == [f"nnunet_fork_client: no fork server at {server.socket} "
                                                  "(No such file or directory); nnUNetv2_predict not run"]
