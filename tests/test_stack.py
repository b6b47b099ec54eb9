"""The local stack: `stack up` gives a working S3, is not doubled, `stack down` stops it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from _stack_fixtures import free_port, running_stack
from mouthmap.stack import (
    ManagedProcess,
    StackError,
    s3_client,
    s3_env,
    stack_down,
    stack_status,
    stack_up,
)
from mouthmap.stack.services import pid_alive, port_is_free, port_open


@pytest.mark.integration
def test_stack_up_serves_both_buckets_is_reused_and_down_frees_the_port(tmp_path):
    state, port = tmp_path / "stack", free_port()
    try:
        info = stack_up(state, s3_port=port, timeout=120)
        assert info.endpoint_url == f"http://127.0.0.1:{port}"
        assert info.managed and not info.reused and set(info.buckets) == {"dvc", "mlflow"}
        s3 = s3_client(info.endpoint_url, info.credentials)
        for bucket in ("dvc", "mlflow"):
            s3.put_object(Bucket=bucket, Key="probe/hello.txt", Body=b"hello " + bucket.encode())
            body = s3.get_object(Bucket=bucket, Key="probe/hello.txt")["Body"].read()
            assert body == b"hello " + bucket.encode()

        # a second `up`, in this process and from a fresh one (the CLI case), reuses it
        again = stack_up(state, s3_port=port)
        assert again.reused and again.pid == info.pid
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from mouthmap.stack import stack_up; "
                "i = stack_up(sys.argv[1], s3_port=int(sys.argv[2])); print(i.reused, i.pid)",
                str(state),
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()
        assert out == ["True", str(info.pid)]
        status = stack_status(state)["seaweedfs"]
        assert status.running and status.healthy and status.pid == info.pid

        env = s3_env(info)
        assert env["AWS_ACCESS_KEY_ID"] == info.access_key
        assert env["AWS_SECRET_ACCESS_KEY"] == info.secret_key
        assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == info.endpoint_url
    finally:
        stopped = stack_down(state)
    assert stopped == ["seaweedfs"]
    assert not pid_alive(info.pid)
    assert not port_open(port) and port_is_free(port)
    assert not stack_status(state)["seaweedfs"].running
    assert stack_down(state) == []  # nothing left to stop


@pytest.mark.integration
def test_objects_survive_a_restart_of_the_stack(tmp_path):
    state = tmp_path / "stack"
    with running_stack(state) as info:
        port = info.endpoint_url.rsplit(":", 1)[1]
        s3_client(info.endpoint_url, info.credentials).put_object(
            Bucket="dvc", Key="keep/me.bin", Body=b"\x00\x01persist"
        )
    with running_stack(state, s3_port=int(port)) as info2:
        assert not info2.reused
        got = s3_client(info2.endpoint_url, info2.credentials).get_object(
            Bucket="dvc", Key="keep/me.bin"
        )
        assert got["Body"].read() == b"\x00\x01persist"


@pytest.mark.integration
def test_stack_up_refuses_a_port_held_by_another_program(tmp_path):
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        try:
            with pytest.raises(StackError, match=str(port)):
                stack_up(tmp_path / "stack", s3_port=port, timeout=60)
        finally:
            stack_down(tmp_path / "stack")
    assert not stack_status(tmp_path / "stack")["seaweedfs"].running


def test_a_service_that_dies_at_start_reports_its_log(tmp_path):
    proc = ManagedProcess("broken", tmp_path)
    cmd = [sys.executable, "-c", "import sys; print('boom: no config'); sys.exit(3)"]
    with pytest.raises(StackError, match=r"(?s)exited with code 3.*boom: no config"):
        proc.start(cmd, health=lambda: False, timeout=30)
    assert not proc.is_running()


def test_a_service_that_never_gets_healthy_is_stopped(tmp_path):
    proc = ManagedProcess("sleepy", tmp_path)
    cmd = [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"]
    t0 = time.monotonic()
    with pytest.raises(StackError, match=r"(?s)not become healthy.*waiting"):
        proc.start(cmd, health=lambda: False, timeout=1.5)
    assert time.monotonic() - t0 < 30
    assert not proc.is_running() and not proc.pid_file.exists()


class _VolumesNotYetKnown:
    """An S3 client whose reads fail ``failures`` times, as SeaweedFS's do in the moments
    after a restart before the volume server's first heartbeat ("volume 1 not found")."""

    def __init__(self, failures: int) -> None:
        self.failures, self.objects, self.calls = failures, {}, []

    def put_object(self, Bucket, Key, Body):  # noqa: N803 (boto3's names)
        self.calls.append("put")
        self.objects[Key] = Body

    def get_object(self, Bucket, Key):  # noqa: N803
        import io

        from botocore.exceptions import ClientError

        self.calls.append("get")
        if self.failures:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "InternalError"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket, Key):  # noqa: N803
        self.calls.append("delete")
        del self.objects[Key]


def test_the_stack_waits_until_stored_objects_can_be_read():
    from mouthmap.stack.seaweed import wait_for_data_path

    client = _VolumesNotYetKnown(failures=3)
    wait_for_data_path(client, "dvc", timeout=10)
    assert client.calls.count("get") == 4 and client.calls[-1] == "delete"
    assert client.objects == {}  # the probe object is gone
    with pytest.raises(StackError, match="does not store objects yet"):
        wait_for_data_path(_VolumesNotYetKnown(failures=10**6), "dvc", timeout=0.5)
