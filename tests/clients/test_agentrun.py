"""The AgentRun face against a real server, through the real `agentrun-sdk` package with its
`data_endpoint` pointed at it. The flows and assertions of the SDK's own e2e tests
(tests/e2e/test_sandbox_code_interpreter.py in Serverless-Devs/agentrun-sdk-python), which
run them against Alibaba Cloud; the control plane (templates) is not part of the face."""

import asyncio
import os
import tempfile
import time
import uuid

os.environ.setdefault("DISABLE_BREAKING_CHANGES_WARNING", "1")

import pytest  # noqa: E402
from agentrun.sandbox import Sandbox  # noqa: E402
from agentrun.sandbox.api.code_interpreter_data import CodeInterpreterDataAPI  # noqa: E402
from agentrun.sandbox.client import SandboxClient  # noqa: E402
from agentrun.sandbox.model import CodeLanguage, TemplateType  # noqa: E402
from agentrun.utils.config import Config  # noqa: E402
from agentrun.utils.exception import ClientError, ResourceNotExistError  # noqa: E402


@pytest.fixture(scope="module")
def config(server):
    return Config(data_endpoint=server.url)


@pytest.fixture
def sandbox(config):
    """A code interpreter sandbox, ready once its health says so, deleted afterwards."""
    made = SandboxClient(config=config).create_sandbox(
        template_name="code-interpreter", sandbox_idle_timeout_seconds=600)
    assert made.status == "READY"
    sb = Sandbox.connect(made.sandbox_id, template_type=TemplateType.CODE_INTERPRETER, config=config)
    for _ in range(60):
        if sb.check_health().get("status") == "ok":
            break
        time.sleep(1)
    yield sb
    try:
        SandboxClient(config=config).delete_sandbox(made.sandbox_id)
    except ResourceNotExistError:
        pass


def content_of(read_result):
    return read_result.get("content", read_result) if isinstance(read_result, dict) else read_result


# --- The SDK's own e2e flows --------------------------------------------------------------------


def test_context_execute_python(sandbox):
    result = sandbox.context.execute(code="print('hello world')", language=CodeLanguage.PYTHON)
    assert result is not None
    assert "hello world" in str(result)
    # The documented shape: results ending in endOfExecution, and the toolset's totals.
    assert result["results"][-1] == {"type": "endOfExecution", "status": "ok"}
    assert result["stdout"] == "hello world\n" and result["exitCode"] == 0


def test_context_execute_shell(sandbox):
    result = sandbox.process.cmd(command="echo 'test'", cwd="/")
    assert "test" in str(result) and result["result"]["exitCode"] == 0


def test_context_create_and_execute(sandbox):
    with sandbox.context.create(language=CodeLanguage.PYTHON) as ctx:
        result = ctx.execute(code="x = 10\nprint(x)")
        assert result["stdout"] == "10\n"
        result = ctx.execute(code="print(x + 5)")
        assert result["stdout"] == "15\n"
        ctx_info = ctx.get()
        assert ctx_info is not None and ctx_info._context_id is not None
        contexts = ctx.list()
        assert isinstance(contexts, list)
        assert ctx_info._context_id in [c["id"] for c in contexts]
    # Leaving the `with` deleted it.
    assert ctx_info._context_id not in [c["id"] for c in sandbox.context.list()]


def test_context_create_and_execute_async(sandbox):
    async def flow():
        async with await sandbox.context.create_async(language=CodeLanguage.PYTHON) as ctx:
            await ctx.execute_async(code="y = 2")
            return await ctx.execute_async(code="y * 21")
    result = asyncio.run(flow())
    assert result["results"][0]["text"] == "42"
    assert result["results"][0]["isMainResult"] is True


def test_filesystem_list_mkdir_stat_move_remove(sandbox):
    assert isinstance(sandbox.file_system.list(path="/"), (list, dict))
    test_dir = f"/test-dir-{uuid.uuid4().hex[:8]}"
    assert sandbox.file_system.mkdir(path=test_dir) is not None
    stat = sandbox.file_system.stat(path=test_dir)
    assert isinstance(stat, dict) and stat["type"] == "directory"
    source, dest = f"{test_dir}/source.txt", f"{test_dir}/dest.txt"
    sandbox.file.write(path=source, content="test content")
    assert sandbox.file_system.move(source=source, destination=dest) is not None
    assert "test content" in str(content_of(sandbox.file.read(path=dest)))
    names = [e["name"] for e in sandbox.file_system.list(path=test_dir)]
    assert names == ["dest.txt"]
    assert sandbox.file_system.remove(path=test_dir) is not None
    with pytest.raises(ClientError) as missing:
        sandbox.file_system.stat(path=test_dir)
    assert missing.value.status_code == 404


def test_filesystem_upload_download(sandbox):
    with tempfile.NamedTemporaryFile(mode="w", delete=False, suffix=".txt") as f:
        test_content = f"Test file created at {time.time()}\nThis is a test for upload/download functionality.\n"
        f.write(test_content)
        local_file_path = f.name
    try:
        remote_path = f"/test-upload-{uuid.uuid4().hex[:8]}.txt"
        assert sandbox.file_system.upload(local_file_path=local_file_path, target_file_path=remote_path)
        assert sandbox.file_system.stat(path=remote_path)["size"] == len(test_content)
        download_path = local_file_path + ".downloaded"
        result = sandbox.file_system.download(path=remote_path, save_path=download_path)
        assert result["size"] == len(test_content)
        with open(download_path, encoding="utf-8") as f:
            assert test_content in f.read()
        os.remove(download_path)
    finally:
        os.remove(local_file_path)


def test_file_write_read_overwrite_nested_and_large(sandbox):
    path = "/test-file.txt"
    assert sandbox.file.write(path=path, content="Hello, World!\nThis is a test file.")
    assert "Hello, World!\nThis is a test file." in str(content_of(sandbox.file.read(path=path)))
    sandbox.file.write(path=path, content="new content")
    content = str(content_of(sandbox.file.read(path=path)))
    assert "new content" in content and "Hello" not in content
    nested = "/test-nested/subdir"
    sandbox.file_system.mkdir(path=nested)
    sandbox.file.write(path=f"{nested}/test.txt", content="file in nested directory")
    assert content_of(sandbox.file.read(path=f"{nested}/test.txt")) == "file in nested directory"
    large = "x" * (1024 * 1024)
    sandbox.file.write(path="/test-large.txt", content=large)
    assert len(str(content_of(sandbox.file.read(path="/test-large.txt")))) >= len(large) * 0.9
    # Binary content travels as base64 either way.
    sandbox.file.write(path="/bin.dat", content="AAEC/w==", encoding="base64")
    read = sandbox.file.read(path="/bin.dat")
    assert (read["encoding"], read["content"]) == ("base64", "AAEC/w==")


def test_error_handling_nonexistent_file(sandbox):
    with pytest.raises(ClientError) as e:
        sandbox.file.read(path="/nonexistent-file-xyz.txt")
    assert e.value.status_code == 404


def test_processes_list_get_cmd(sandbox):
    processes = sandbox.process.list()
    assert isinstance(processes, list) and processes
    first_pid = processes[0].get("pid", "1")
    assert sandbox.process.get(pid=str(first_pid))["pid"] == first_pid
    assert sandbox.process.get(pid="1")["name"] == "cella-init"
    result = sandbox.process.cmd(command="ls", cwd="/")
    assert result.get("status") in ["completed", "success", None]
    assert result["result"]["exitCode"] == 0
    result = sandbox.process.cmd(command="echo 'test output'", cwd="/")
    assert "test output" in result["result"]["stdout"]
    for cmd in ["echo 'command 1'", "ls /", "pwd"]:
        assert sandbox.process.cmd(command=cmd, cwd="/") is not None
    test_dir = "/test-cwd"
    sandbox.file_system.mkdir(path=test_dir)
    assert sandbox.process.cmd(command="pwd", cwd=test_dir)["stdout"] == "/test-cwd\n"
    failed = sandbox.process.cmd(command="exit 3", cwd="/")
    assert (failed["status"], failed["exitCode"]) == ("completed", 3)


def test_code_interpreter_workflow(sandbox):
    workflow_dir = f"/workflow-{uuid.uuid4().hex[:8]}"
    sandbox.file_system.mkdir(path=workflow_dir)
    script_path = f"{workflow_dir}/script.py"
    script = (f"with open('{workflow_dir}/data.txt', 'w') as f:\n"
              "    f.write('Generated by Python script\\n')\n    f.write('Number: 42\\n')\n"
              "print('Script executed successfully')\n")
    sandbox.file.write(path=script_path, content=script)
    result = sandbox.context.execute(code=f"exec(open('{script_path}').read())", language=CodeLanguage.PYTHON)
    assert "Script executed successfully" in result["stdout"]
    content = str(content_of(sandbox.file.read(path=f"{workflow_dir}/data.txt")))
    assert "Generated by Python script" in content and "Number: 42" in content
    assert "Number: 42" in sandbox.process.cmd(command=f"cat {workflow_dir}/data.txt", cwd=workflow_dir)["stdout"]
    sandbox.file_system.remove(path=workflow_dir)


def test_concurrent_file_operations(sandbox):
    async def flow():
        base_dir = "/concurrent"
        await sandbox.file_system.mkdir_async(path=base_dir)
        await asyncio.gather(*[sandbox.file.write_async(path=f"{base_dir}/file-{i}.txt", content=f"Content of file {i}")
                               for i in range(5)])
        return await asyncio.gather(*[sandbox.file.read_async(path=f"{base_dir}/file-{i}.txt") for i in range(5)])
    for i, read in enumerate(asyncio.run(flow())):
        assert f"Content of file {i}" in str(content_of(read))


# --- Beyond the SDK's e2e tests -----------------------------------------------------------------


def test_the_data_api_with_a_chosen_sandbox_id_and_lifecycle(config):
    sandbox_id = f"agent-{uuid.uuid4().hex[:10]}"
    client = SandboxClient(config=config)
    made = client.create_sandbox(template_name="code-interpreter", sandbox_id=sandbox_id)
    assert made.sandbox_id == sandbox_id and made.template_name == "code-interpreter"
    assert client.get_sandbox(sandbox_id).status == "READY"
    api = CodeInterpreterDataAPI(sandbox_id=sandbox_id, config=config)
    assert api.check_health() == {"status": "ok"}
    # The same id while it runs is refused.
    with pytest.raises(ClientError):
        client.create_sandbox(template_name="code-interpreter", sandbox_id=sandbox_id)
    assert client.stop_sandbox(sandbox_id).status == "TERMINATED"
    assert client.get_sandbox(sandbox_id).status == "TERMINATED"
    client.delete_sandbox(sandbox_id)
    with pytest.raises(ResourceNotExistError):
        client.get_sandbox(sandbox_id)
    with pytest.raises(ResourceNotExistError):
        client.delete_sandbox(sandbox_id)


def test_unknown_template_and_unsupported_mounts_are_refused(config):
    with pytest.raises(ClientError) as e:
        SandboxClient(config=config).create_sandbox(template_name="no-such-template")
    assert "unknown template" in str(e.value)


def test_default_contexts_by_language_and_explicit_ones(sandbox):
    api = sandbox.data_api
    py = api.execute_code(code="import sys; sys.version_info[0]", context_id=None)
    assert py["results"][0]["text"] == "3"
    # The default python context keeps its state between calls naming no context.
    api.execute_code(code="kept = 'yes'", context_id=None)
    assert api.execute_code(code="kept", context_id=None)["results"][0]["text"] == "'yes'"
    js = api.execute_code(code="[1, 2].map(x => x * 2)", context_id=None, language="javascript")
    assert js["results"][0]["text"] == "[ 2, 4 ]", js
    ctx = api.create_context(language="javascript", cwd="/tmp")
    assert (ctx["language"], ctx["cwd"]) == ("javascript", "/tmp") and ctx["id"]
    api.execute_code(code="let n = 20", context_id=ctx["id"])
    assert api.execute_code(code="n + 1", context_id=ctx["id"])["results"][0]["text"] == "21"
    assert api.get_context(ctx["id"])["id"] == ctx["id"]
    api.delete_context(ctx["id"])
    with pytest.raises(ClientError) as e:
        api.get_context(ctx["id"])
    assert e.value.status_code == 404


def test_errors_timeouts_and_plots(sandbox):
    api = sandbox.data_api
    err = api.execute_code(code="raise ValueError('nope')", context_id=None)
    assert err["exitCode"] == 1
    error = next(r for r in err["results"] if r["type"] == "error")
    assert (error["name"], error["value"]) == ("ValueError", "nope")
    assert err["results"][-1] == {"type": "endOfExecution", "status": "error"}
    started = time.time()
    slow = api.execute_code(code="print('start', flush=True)\nimport time\ntime.sleep(30)", context_id=None, timeout=1)
    assert time.time() - started < 5
    assert slow["results"][-1]["status"] == "timeout" and slow["stdout"] == "start\n"
    plot = api.execute_code(code="import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()", context_id=None)
    image = next(r for r in plot["results"] if r["type"] == "result")
    assert image["isMainResult"] is False and image["data"]["image/png"]


def test_a_process_listed_can_be_killed_but_not_the_init(sandbox):
    api = sandbox.data_api
    api.cmd(command="nohup sleep 300 >/dev/null 2>&1 &", cwd="/tmp")
    # The shell returns once it has forked: nohup may not have become `sleep` yet.
    for _ in range(50):
        sleeper = next((p for p in api.list_processes() if p["command"] == "sleep 300"), None)
        if sleeper:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the background process is not listed")
    api.kill_process(str(sleeper["pid"]))
    for _ in range(50):
        if not any(p["pid"] == sleeper["pid"] for p in api.list_processes()):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the process was not killed")
    with pytest.raises(ClientError) as e:
        api.kill_process("1")
    assert e.value.status_code == 400
    # The init's command line is the server's: only its name is shown.
    init = api.get_process("1")
    assert init["command"] == "cella-init"


def test_unknown_sandbox_is_resource_not_exist(config):
    with pytest.raises(ResourceNotExistError):
        SandboxClient(config=config).get_sandbox("no-such-sandbox")
    api = CodeInterpreterDataAPI(sandbox_id="no-such-sandbox", config=config)
    with pytest.raises(ClientError) as e:
        api.execute_code(code="1", context_id=None)
    assert e.value.status_code == 404 and "sandbox not found" in str(e.value)
