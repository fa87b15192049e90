"""The real `rl-rock` SDK against cella's ROCK face: start and status, commands in sessions
(normal and nohup modes), execute, files, statistics, commit, stop."""

import asyncio

import pytest
from rock.actions import Command, CreateBashSessionRequest, ReadFileRequest, WriteFileRequest
from rock.sdk.sandbox.client import Sandbox
from rock.sdk.sandbox.config import SandboxConfig


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def rock_url(server):
    return server.url


async def started(url, **config):
    sandbox = Sandbox(SandboxConfig(base_url=url, image="python:3.11", startup_timeout=60, **config))
    await sandbox.start()
    return sandbox


def test_start_status_and_stop(rock_url):
    async def flow():
        sandbox = await started(rock_url, memory="512m", cpus=1)
        status = await sandbox.get_status()
        assert status.is_alive and status.state.value == "running"
        assert status.host_name and status.memory == "0.50g"
        assert (await sandbox.is_alive()).is_alive
        await sandbox.stop()
        with pytest.raises(Exception):
            await sandbox.get_status()
        assert (await sandbox.get_status(include_all_states=True)).state.value == "stopped"

    run(flow())


def test_sessions_keep_state_and_failures_raise(rock_url):
    async def flow():
        sandbox = await started(rock_url)
        await sandbox.create_session(CreateBashSessionRequest(session="s"))
        assert (await sandbox.arun("cd /tmp && export X=42", session="s")).exit_code == 0
        observation = await sandbox.arun("pwd; echo $X; echo err >&2", session="s")
        assert observation.output == "/tmp\r\n42\r\nerr"
        with pytest.raises(Exception, match="failed with exit code 3"):
            await sandbox.arun("(exit 3)", session="s")
        # A session made on the fly, and the nohup mode with its real exit code.
        assert (await sandbox.arun("echo fresh")).output == "fresh"
        nohup = await sandbox.arun("sleep 1; echo done-late", mode="nohup", wait_interval=5, wait_timeout=60)
        assert "done-late" in nohup.output and nohup.exit_code == 0
        await sandbox.stop()

    run(flow())


def test_execute_files_statistics(rock_url):
    async def flow():
        sandbox = await started(rock_url)
        result = await sandbox.execute(Command(command=["python3", "-c", "print(6 * 7)"]))
        assert result.stdout == "42\n" and result.exit_code == 0
        written = await sandbox.write_file(WriteFileRequest(content="hello rock", path="/tmp/d/f.txt"))
        assert written.success
        assert (await sandbox.read_file(ReadFileRequest(path="/tmp/d/f.txt"))).content == "hello rock"
        assert (await sandbox.read_file(ReadFileRequest(path="/nope"))).content == ""
        await sandbox.stop()

    run(flow())


def test_commit_then_start_from_it(rock_url):
    async def flow():
        sandbox = await started(rock_url)
        await sandbox.arun("echo kept > ~/note")
        status = await sandbox.commit(image_tag="local/rock-commit:1", username="", password="")
        assert status is not None and status.phase.value == "SUCCEEDED", status
        await sandbox.stop()
        fresh = Sandbox(SandboxConfig(base_url=rock_url, image="local/rock-commit:1", startup_timeout=60))
        await fresh.start()
        assert (await fresh.arun("cat ~/note")).output == "kept"
        await fresh.stop()

    run(flow())


def test_envelopes_of_bad_requests(rock_url):
    import requests

    api = f"{rock_url}/apis/envs/sandbox/v1"
    # Validation faults are HTTP 200 "invalid parameter" envelopes, never 422.
    r = requests.post(f"{api}/start_async", json={"image": "  "})
    assert r.status_code == 200
    assert r.json() == {"status": "Failed", "message": "invalid parameter",
                        "error": "body.image: String should have at least 1 character", "result": None}
    r = requests.post(f"{api}/execute", data=b"{not json")
    assert r.status_code == 200 and r.json()["message"] == "invalid parameter"
    # An unknown sandbox: code 4000 where ROCK reports one, a dangling stop is fine.
    r = requests.get(f"{api}/get_status", params={"sandbox_id": "nope", "include_all_states": "False"}).json()
    assert r["status"] == "Failed" and r["result"]["code"] == 4000 and "not found" in r["error"]
    assert requests.post(f"{api}/stop", json={"sandbox_id": "nope"}).json()["result"] == "nope stopped"
    alive = requests.get(f"{api}/is_alive", params={"sandbox_id": "nope"}).json()
    assert alive["status"] == "Success" and alive["result"]["is_alive"] is False
    # A missing session and a timeout are Failed, with the rocklet's messages.
    started_ = requests.post(f"{api}/start_async", json={"image": "python:3.11", "memory": "1g"}).json()
    sid = started_["result"]["sandbox_id"]
    r = requests.post(f"{api}/run_in_session", json={"sandbox_id": sid, "session": "x", "command": "true"}).json()
    assert r == {"status": "Failed", "message": None, "error": "session 'x' does not exist", "result": None}
    requests.post(f"{api}/create_session", json={"sandbox_id": sid, "session": "x"})
    r = requests.post(f"{api}/run_in_session",
                      json={"sandbox_id": sid, "session": "x", "command": "sleep 5", "timeout": 0.5}).json()
    assert r["status"] == "Failed" and r["error"].startswith("timeout after 0.5 seconds")
    r = requests.post(f"{api}/run_in_session", json={"sandbox_id": sid, "session": "x", "command": "echo ok"}).json()
    assert r["result"]["output"] == "ok"
    stats = requests.get(f"{api}/get_sandbox_statistics", params={"sandbox_id": sid}).json()["result"]
    assert set(stats) >= {"cpu", "mem", "disk", "net"} and 0 <= stats["mem"] < 100
    # An interactive program: `expect` ends the wait at its prompt, input goes to it.
    r = requests.post(f"{api}/run_in_session", json={"sandbox_id": sid, "session": "x", "command": "python3 -q",
                                                     "expect": [">>> "]}).json()
    assert r["result"]["expect_string"] == ">>> ", r
    r = requests.post(f"{api}/run_in_session", json={"sandbox_id": sid, "session": "x", "command": "print(6 * 7)",
                                                     "expect": [">>> "], "is_interactive_command": True}).json()
    assert "42" in r["result"]["output"], r
    requests.post(f"{api}/stop", json={"sandbox_id": sid})
    # A stopped sandbox restarts under its id, as its image.
    r = requests.post(f"{api}/restart", json={"sandbox_id": sid}).json()
    assert r["status"] == "Success" and r["result"]["sandbox_id"] == sid, r
    assert requests.get(f"{api}/is_alive", params={"sandbox_id": sid}).json()["result"]["is_alive"] is True
    r = requests.post(f"{api}/restart", json={"sandbox_id": sid}).json()
    assert r["status"] == "Failed" and "is running" in r["error"]
    requests.post(f"{api}/stop", json={"sandbox_id": sid})


GUESSES = ["\\boxed{5}", "\\boxed{3}", "\\boxed{2}", "\\boxed{1}", "\\boxed{4}"]


def direct_trajectory(env_id, seed):
    """The same env stepped by gem-llm itself, outside any sandbox."""
    import json
    import subprocess

    script = (
        "import gem, json, sys\n"
        "env = gem.make(sys.argv[1]); out = [env.reset(seed=int(sys.argv[2]))]\n"
        "for a in json.loads(sys.argv[3]):\n"
        "    step = env.step(a); out.append(step)\n"
        "    if step[2] or step[3]: break\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(["/usr/bin/python3", "-S", "-c", script, env_id, str(seed), json.dumps(GUESSES)],
                          env={"PYTHONPATH": "/opt/cella/gem"}, capture_output=True, text=True, check=True)
    return [list(x) for x in json.loads(done.stdout)]


def test_gem_env_stepped_to_the_end(rock_url, monkeypatch):
    import requests
    import rock

    monkeypatch.setenv("ROCK_BASE_URL", rock_url)
    env = rock.make("game:GuessTheNumber-v0-easy")
    trajectory = [list(env.reset(seed=42))]
    for action in GUESSES:
        step = env.step(action)
        trajectory.append(list(step))
        if step[2] or step[3]:
            break
    assert trajectory[-1][2] is True, trajectory
    assert trajectory == direct_trajectory("game:GuessTheNumber-v0-easy", 42)
    env.close()
    # Bare JSON and HTTP 500s, as ROCK's GEM routes answer.
    api = f"{rock_url}/apis/v1/envs/gem"
    r = requests.post(f"{api}/step", json={"sandbox_id": "gone", "action": "x"})
    assert r.status_code == 500 and "not found" in r.json()["detail"]
    r = requests.post(f"{api}/make", json={"env_id": "game:Wordle-v0-easy"})
    assert r.status_code == 500 and "needs a download" in r.json()["detail"]
    r = requests.post(f"{api}/make", json={"env_id": "no-such-env"})
    assert r.status_code == 500 and r.json()["traceback"]
    r = requests.post(f"{api}/step", json={"sandbox_id": " ", "action": "x"})
    assert r.status_code == 200 and r.json()["message"] == "invalid parameter"
    # Stopping an env's sandbox ends the env.
    made = requests.post(f"{api}/make", json={"env_id": "game:GuessTheNumber-v0-easy"}).json()
    requests.post(f"{rock_url}/apis/envs/sandbox/v1/stop", json={"sandbox_id": made["sandbox_id"]})
    r = requests.post(f"{api}/reset", json={"sandbox_id": made["sandbox_id"], "seed": 1})
    assert r.status_code == 500 and "not found" in r.json()["detail"]


# Ported from ROCK's own SDK integration tests (tests/integration/sdk in alibaba/ROCK), where
# they apply to a jail whose user is not root (`~` is /home/user, /root is hidden).


def test_ported_file_operations_and_lifecycle(rock_url, tmp_path):
    from rock.actions import CloseBashSessionRequest, UploadRequest

    async def flow():
        sandbox = await started(rock_url, cpus=1, memory="1g")
        await sandbox.create_session(CreateBashSessionRequest(session="default"))
        assert (await sandbox.arun("cd ~ && pwd", session="default")).output == "/home/user"
        assert (await sandbox.arun("echo Hello ROCK", session="default")).output == "Hello ROCK"
        local = tmp_path / "up.txt"
        local.write_text("line1\nline2\nline3\n")
        uploaded = await sandbox.upload(UploadRequest(source_path=str(local), target_path="/tmp/up/up.txt"))
        assert uploaded.success
        assert (await sandbox.arun("cat /tmp/up/up.txt", session="default")).output == "line1\r\nline2\r\nline3"
        lines = await sandbox.read_file_by_line_range("/tmp/up/up.txt", start_line=2, end_line=3)
        assert lines.content.splitlines() == ["line2", "line3"]
        assert (await sandbox.execute(Command(command="pwd", cwd="/tmp"))).stdout == "/tmp\n"
        status = await sandbox.get_status()
        assert status.cpus == 1.0
        # A closed session refuses commands.
        await sandbox.close_session(CloseBashSessionRequest(session="default"))
        with pytest.raises(Exception, match="does not exist"):
            await sandbox.arun("true", session="default")
        # Stop, restart, delete.
        await sandbox.stop()
        assert (await sandbox.get_status(include_all_states=True)).state.value == "stopped"
        await sandbox.restart()
        assert (await sandbox.get_status()).state.value == "running"
        await sandbox.stop()
        await sandbox.delete()
        with pytest.raises(Exception):
            await sandbox.get_status()

    run(flow())


def test_ported_gem_sokoban(rock_url, monkeypatch):
    import rock

    monkeypatch.setenv("ROCK_BASE_URL", rock_url)
    env = rock.make("game:Sokoban-v0-easy")
    observation, info = env.reset(seed=42)
    assert isinstance(observation, str) and isinstance(info, dict)
    for _ in range(10):
        observation, reward, terminated, truncated, info = env.step("\\boxed{up}")
        assert isinstance(reward, float)
        if terminated or truncated:
            break
    env.close()
