"""The SandboxFusion wire contract through the real client (and raw JSON as verl sends it):
files, concurrency, Jupyter, memory limits, validation errors, big output and hostile code."""

import asyncio
import base64
import json
import os
import time

import pytest
import requests
from sandbox_fusion import (RunCodeRequest, RunJupyterRequest, run_code, run_concurrent, run_jupyter,
                            summary_run_code_result, SummaryMapping)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_ping(endpoint):
    r = requests.get(f"{endpoint}/v1/ping")
    assert r.status_code == 200
    assert r.text == '"pong"'
    assert r.headers["content-type"].startswith("application/json")


def test_response_has_every_field_in_order(endpoint):
    r = requests.post(f"{endpoint}/run_code", json={"code": "print(1)", "language": "python"}).json()
    assert list(r) == ["status", "message", "compile_result", "run_result", "executor_pod_name", "files"]
    assert r["compile_result"] is None and r["executor_pod_name"] is None and r["files"] == {}
    rr = r["run_result"]
    assert list(rr)[:6] == ["status", "execution_time", "return_code", "stdout", "stderr", "cpu_time"]
    assert rr["cpu_time"] > 0 and rr["execution_time"] > 0


def test_files_and_fetch_files_stay_inside_the_sandbox(endpoint):
    marker = f"/tmp/cella-fusion-{os.getpid()}"
    code = (
        "print(open('dir1/dir2/dir3/secret_flag').read())\n"
        "open('a.txt', 'w').write('A')\n"
        "open('/mnt/b', 'w').write('B')\n"
        f"print(open('{marker}').read())\n"
    )
    r = run_code(RunCodeRequest(code=code, language="python",
                                files={"dir1/dir2/dir3/secret_flag": b64("flag{x}"), marker: b64("inside"),
                                       "skipped": None, "IGNORE_THIS_FILE": b64("no")},
                                fetch_files=["a.txt", "/mnt/b", "missing.txt"]), max_attempts=1)
    assert r.status == "Success", r
    assert r.run_result.stdout == "flag{x}\ninside\n"
    assert r.files == {"a.txt": b64("A"), "/mnt/b": b64("B")}
    # The absolute paths were the sandbox's own, never the host's.
    assert not os.path.exists(marker)
    assert not os.path.exists("/mnt/b")


def test_fetched_files_beyond_the_read_limit_are_named_in_the_message(endpoint):
    # 70 MB is past the default 64 MiB read limit for a run's fetched files together.
    code = "open('big', 'wb').write(b'x' * (70 << 20))\nopen('small', 'w').write('s')"
    r = run_code(RunCodeRequest(code=code, language="python", fetch_files=["small", "big", "missing"]),
                 max_attempts=1)
    assert r.status == "Success", r
    assert r.files == {"small": b64("s")}
    assert "big" in r.message and "max_read_bytes" in r.message and "missing" not in r.message


def test_jest_runs_write_the_report_graders_fetch(endpoint):
    # FullStackBench-style graders fetch jest-report.json; a React component comes in `files`.
    component = "export default function Greeting({ name }: { name: string }) { return <h1>Hello, {name}</h1>; }\n"
    tests = ("import { render, screen } from '@testing-library/react';\n"
             "import Greeting from './Greeting';\n"
             "test('greets', () => { render(<Greeting name='cella' />);\n"
             "  expect(screen.getByRole('heading')).toHaveTextContent('Hello, cella'); });\n"
             "test('fails', () => { expect(1).toBe(2); });\n")
    for lang, files in [("react", {"Greeting.tsx": b64(component)}), ("jest", {})]:
        code = tests if lang == "react" else "test('passes', () => {});\ntest('fails', () => { expect(1).toBe(2); });"
        r = run_code(RunCodeRequest(code=code, language=lang, files=files, fetch_files=["jest-report.json"],
                                    run_timeout=30), max_attempts=1)
        assert r.status == "Failed", r
        report = json.loads(base64.b64decode(r.files["jest-report.json"]))
        assert (report["numPassedTests"], report["numFailedTests"]) == (1, 1), (lang, r)


def test_run_concurrent_200_programs(endpoint):
    codes = [f"print({i} * {i})" for i in range(200)]
    results = run_concurrent(run_code, args=[[RunCodeRequest(code=c, language="python")] for c in codes], concurrency=32)
    assert [r.run_result.stdout for r in results] == [f"{i * i}\n" for i in range(200)]
    assert all(r.status == "Success" for r in results)


def test_one_programs_tests_run_concurrently_each_with_its_own_stdin(endpoint):
    # As an evaluation sends them: one solution, a run per test. The server compiles it once
    # and every run gets that compile; each still runs on its own input.
    code = "#include <iostream>\nint main() { long x; std::cin >> x; std::cout << x * x << std::endl; }"
    tests = list(range(40))
    results = run_concurrent(run_code, args=[[RunCodeRequest(code=code, language="cpp", stdin=str(t))] for t in tests],
                             concurrency=16)
    assert [r.run_result.stdout for r in results] == [f"{t * t}\n" for t in tests]
    assert all(r.status == "Success" and r.compile_result.return_code == 0 for r in results)
    # Nearly every run skipped the compile (a kept one takes a millisecond or two, not 200).
    assert sum(r.compile_result.execution_time < 0.05 for r in results) >= 35, [
        r.compile_result.execution_time for r in results]


def test_summary_mapping(endpoint):
    r = run_code(RunCodeRequest(code="int main( {", language="cpp"), max_attempts=1)
    assert summary_run_code_result(r, SummaryMapping(CompileFailed="CE")) == "CE"
    r = run_code(RunCodeRequest(code="while True: pass", language="python", run_timeout=0.5), max_attempts=1)
    assert summary_run_code_result(r, SummaryMapping(RunTimeout="TLE")) == "TLE"


def test_jupyter_cells(endpoint):
    r = run_jupyter(RunJupyterRequest(cells=[
        "print(123)",
        "'hello'",
        "assert 1 == 2",
        "x = 41\nx + 1",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        "import sys; print('err', file=sys.stderr)",
    ]), max_attempts=1)
    assert r.status == "Success", r
    cells = r.cells
    assert cells[0].stdout == "123\n"
    assert cells[1].display[0]["text/plain"] == "'hello'"
    assert cells[2].error[0]["ename"] == "AssertionError"
    # A failing cell does not stop the next; state persists between cells.
    assert cells[3].display[0]["text/plain"] == "42"
    png = base64.b64decode(cells[4].display[0]["image/png"])
    assert png.startswith(b"\x89PNG")
    assert cells[5].stderr == "err\n"


def test_jupyter_files_and_fetch_files(endpoint):
    r = run_jupyter(RunJupyterRequest(
        cells=["import pandas as pd\ndf = pd.read_csv('data.csv')\nopen('out.txt', 'w').write(str(df.a.sum()))"],
        files={"data.csv": b64("a\n1\n2\n")}, fetch_files=["out.txt", "missing.txt"]), max_attempts=1)
    assert r.status == "Success", r
    assert r.files == {"out.txt": b64("3")}


def test_jupyter_timeouts_interrupt_the_kernel(endpoint):
    started = time.time()
    r = requests.post(f"{endpoint}/run_jupyter", json={
        "cells": ["import time\nwhile True: time.sleep(0.01)", "print('after')"], "cell_timeout": 1, "total_timeout": 30,
    }).json()
    assert r["status"] == "Success", r
    assert r["cells"][0]["error"][0]["ename"] == "KeyboardInterrupt"
    assert r["cells"][1]["stdout"] == "after\n"
    r = requests.post(f"{endpoint}/run_jupyter", json={"cells": ["while True: pass", "print(1)"], "total_timeout": 3}).json()
    assert r["status"] == "Failed", r
    assert r["driver"]["status"] == "TimeLimitExceeded"
    # A cell that ignores the interrupt stops the kernel, and the notebook says so.
    deaf = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('deaf')\nwhile True: pass"
    r = requests.post(f"{endpoint}/run_jupyter", json={"cells": [deaf, "print(1)"], "cell_timeout": 1, "total_timeout": 30}).json()
    assert r["status"] == "Failed", r
    assert r["driver"]["status"] == "TimeLimitExceeded"
    assert "ignored the interrupt" in r["message"]
    assert len(r["cells"]) == 1 and r["cells"][0]["stdout"] == "deaf\n"
    assert r["cells"][0]["error"][0]["ename"] == "TimeoutError"
    assert time.time() - started < 25


def test_raw_json_as_verl_sends_it(endpoint):
    payload = {"compile_timeout": 10, "run_timeout": 10, "code": "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
               "stdin": "1 2 3", "memory_limit_MB": 1024, "language": "python", "files": {}, "fetch_files": []}
    r = requests.post(f"{endpoint}/run_code", json=payload, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "Success"
    assert body["run_result"]["stdout"] == "6\n"
    assert body["compile_result"] is None


def test_memory_limit_is_enforced_but_compilers_and_jvms_still_work(endpoint):
    hog = "x = bytearray(600 << 20)\nprint('survived')"
    r = requests.post(f"{endpoint}/run_code", json={"code": hog, "language": "python", "memory_limit_MB": 128}).json()
    assert r["status"] == "Failed", r
    assert r["run_result"]["return_code"] == -9, r
    assert r["run_result"]["oom_killed"] is True, r
    assert r["run_result"]["stdout"] == ""
    java = 'public class Main { public static void main(String[] a){ System.out.println("jvm ok"); } }'
    r = requests.post(f"{endpoint}/run_code", json={"code": java, "language": "java", "memory_limit_MB": 256,
                                                    "compile_timeout": 60, "run_timeout": 30}).json()
    assert r["status"] == "Success", r
    assert r["run_result"]["stdout"] == "jvm ok\n"
    # Contest C++ with <bits/stdc++.h> (its precompiled header is mapped in) fits in 256 MB too.
    cpp = "#include <bits/stdc++.h>\nusing namespace std;\nint main(){map<int,int> m{{2,1}}; cout << m[2] << endl;}"
    r = requests.post(f"{endpoint}/run_code", json={"code": cpp, "language": "cpp", "memory_limit_MB": 256}).json()
    assert r["status"] == "Success", r
    assert r["run_result"]["stdout"] == "1\n"


def test_invalid_requests_get_fastapi_422(endpoint):
    r = requests.post(f"{endpoint}/run_code", json={"language": "python"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["type"] == "missing" and detail[0]["loc"] == ["body", "code"]
    r = requests.post(f"{endpoint}/run_code", json={"code": "x", "language": "cobol"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "literal_error"
    r = requests.post(f"{endpoint}/run_code", json={"code": "x", "language": "python", "run_timeout": "soon"})
    assert r.json()["detail"][0]["type"] == "float_parsing"
    for not_a_timeout in ("nan", " NaN "):
        for route, body in (("run_code", {"code": "x", "language": "python", "run_timeout": not_a_timeout}),
                            ("run_jupyter", {"cells": ["1"], "cell_timeout": not_a_timeout})):
            r = requests.post(f"{endpoint}/{route}", json=body)
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == "finite_number", r.text
    r = requests.post(f"{endpoint}/run_code", data="{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = requests.post(f"{endpoint}/run_jupyter", json={"cells": "not a list"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "list_type"
    # Numeric strings are accepted, as pydantic's lax mode does.
    r = requests.post(f"{endpoint}/run_code", json={"code": "print(2)", "language": "python", "run_timeout": "5"})
    assert r.status_code == 200 and r.json()["status"] == "Success"


def test_64mb_of_output_finishes_and_is_flagged(endpoint):
    code = "import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(64): sys.stdout.write(chunk)"
    started = time.time()
    r = requests.post(f"{endpoint}/run_code", json={"code": code, "language": "python", "run_timeout": 30}).json()
    assert r["status"] == "Success", {k: v for k, v in r.items() if k != "run_result"}
    assert r["run_result"]["stdout_truncated"] is True
    assert 0 < len(r["run_result"]["stdout"]) < 64 << 20
    assert time.time() - started < 20


def test_hostile_code_is_contained(endpoint):
    # Each attempt fails the way the isolation makes it fail, not for some unrelated reason.
    checks = {
        "shadow": ("print(open('/etc/shadow').read())", "FileNotFoundError: [Errno 2]"),
        "network": ("import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)",
                    "OSError: [Errno 101] Network is unreachable"),
        "mount": ("import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
                  "if libc.mount(b'x', b'/tmp', b'tmpfs', 0, None) != 0: raise OSError(ctypes.get_errno(), 'mount')",
                  "PermissionError: [Errno 1] mount"),
        "setuid": ("import os; os.setuid(0)", "PermissionError: [Errno 1] Operation not permitted"),
        "fork bomb": ("import os\nwhile True:\n    os.fork()",
                      "BlockingIOError: [Errno 11] Resource temporarily unavailable"),
    }
    for name, (code, failure) in checks.items():
        r = run_code(RunCodeRequest(code=code, language="python", run_timeout=2), max_attempts=1)
        assert r.status == "Failed" and failure in r.run_result.stderr, (name, r)
    # The server still answers everyone else.
    ok = run_code(RunCodeRequest(code="print('still here')", language="python"), max_attempts=1)
    assert ok.run_result.stdout == "still here\n"


def test_python_has_the_scientific_stack(endpoint):
    code = "import numpy, pandas, matplotlib, scipy, pytest, ipykernel\nprint(numpy.arange(3).sum())"
    r = run_code(RunCodeRequest(code=code, language="python"), max_attempts=1)
    assert r.status == "Success", r
    assert r.run_result.stdout == "3\n"


def test_500_concurrent_requests_all_complete(endpoint):
    codes = [f"print({i})" for i in range(500)]
    results = run_concurrent(run_code, args=[[RunCodeRequest(code=c, language="python"), "", 1, 120] for c in codes],
                             concurrency=500)
    wrong = [(i, r) for i, r in enumerate(results) if r.run_result is None or r.run_result.stdout != f"{i}\n"]
    assert not wrong, f"{len(wrong)} wrong, the first: {wrong[0]}"


def test_a_flood_of_infinite_loops_does_not_starve_others(endpoint):
    from concurrent.futures import ThreadPoolExecutor

    loop = RunCodeRequest(code="while True: pass", language="python", run_timeout=4)
    with ThreadPoolExecutor(8) as pool:
        floods = [pool.submit(run_code, loop, "", 1) for _ in range(8)]
        time.sleep(1)
        t = time.time()
        assert requests.get(f"{endpoint}/v1/ping", timeout=5).status_code == 200
        ping = time.time() - t
        t = time.time()
        short = run_code(RunCodeRequest(code="print('quick')", language="python"), max_attempts=1)
        quick = time.time() - t
        assert all(f.result().run_result.status == "TimeLimitExceeded" for f in floods)
    assert short.run_result.stdout == "quick\n"
    assert ping < 0.2, ping
    # Nine runs on two cores: the short one gets its share at once, not after the loops.
    assert quick < 2, quick


def test_programs_reopen_their_stdio_by_name(endpoint):
    """`/dev/stdin` is `/proc/self/fd/0`: reopening it is checked against the pipe's owner.
    Competitive-programming JavaScript reads its input this way."""
    cases = [
        ("nodejs", "const fs = require('fs');\n"
                   "const nums = fs.readFileSync('/dev/stdin', 'utf8').trim().split(' ').map(Number);\n"
                   "fs.writeFileSync('/dev/stdout', String(nums.reduce((a, b) => a + b)));"),
        ("python", "print(sum(map(int, open('/dev/stdin').read().split())), file=open('/dev/stdout', 'w'))"),
        ("bash", "read -a nums < /dev/stdin; echo $(( ${nums[0]} + ${nums[1]} + ${nums[2]} )) > /dev/stderr"),
    ]
    for language, code in cases:
        r = run_code(RunCodeRequest(code=code, language=language, stdin="1 2 3"), max_attempts=1)
        assert r.status == "Success", r
        assert (r.run_result.stdout + r.run_result.stderr).strip() == "6", r


def test_python_runs_get_the_same_seccomp_policy(endpoint):
    """Python runs fork from the zygote rather than the sandbox init: same confinement."""
    code = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
print('mount', sc(165, 0, 0, 0, 0, 0))
print('unshare', sc(272, 0x10000000))
print('ptrace', sc(101, 16, 1, 0, 0))
print('keyctl', sc(250, 0, 0, 0, 0))
print('tiocsti', sc(16, 0, 0x5412 | (1 << 32), 0))
print('io_uring', sc(425, 1, 0))
try:
    socket.socket(16, socket.SOCK_RAW, 12)
except OSError as e:
    print('netfilter', errno.errorcode[e.errno])
print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0], flush=True)
import os
print(set(open('/proc/self/environ').read().split('\\0')[:-1]) <= {f'{k}={v}' for k, v in os.environ.items()}, flush=True)
print('zygote' in open('/proc/self/cmdline').read(), flush=True)
sc(321, 0, 0, 0)  # bpf: killed
print('survived')
"""
    r = requests.post(f"{endpoint}/run_code", json={"code": code, "language": "python"}).json()
    out = r["run_result"]["stdout"].split("\n")
    assert out[:10] == ["mount EPERM", "unshare EPERM", "ptrace EPERM", "keyctl EPERM", "tiocsti EPERM",
                       "io_uring ENOSYS", "netfilter EPERM", "2",
                       # Its own /proc files are readable, as an exec'd program's are, and hold no more than its env.
                       "True",
                       # A warm interpreter's command line does not hold the zygote's source.
                       "False"], r
    assert "survived" not in r["run_result"]["stdout"]
    assert r["run_result"]["return_code"] == -31, r  # SIGSYS


def test_a_notebook_flooding_output_is_capped(endpoint):
    flood = "import sys\nfor _ in range(50):\n    sys.stdout.write('z' * (1 << 20))\n    sys.stdout.flush()"
    r = requests.post(f"{endpoint}/run_jupyter", json={"cells": [flood, "print('next')"], "total_timeout": 60}).json()
    assert r["status"] == "Success", {k: v for k, v in r.items() if k != "cells"}
    assert 0 < len(r["cells"][0]["stdout"]) <= 4 << 20 and r["cells"][0]["truncated"]
    assert r["cells"][1]["stdout"] == "next\n" and not r["cells"][1]["truncated"]


def test_a_notebook_keeps_32_mib_of_output_in_all_and_runs_every_cell(endpoint):
    # Each cell within its own 4 MiB cap; together past the notebook's (or a request of a
    # thousand such cells would have the server hold gigabytes).
    cells = ["print('z' * (3 << 20))"] * 12 + ["open('ran', 'w').write('yes')", "raise ValueError('v' * 5000)"]
    r = requests.post(f"{endpoint}/run_jupyter",
                      json={"cells": cells, "fetch_files": ["ran"], "total_timeout": 60}).json()
    assert r["status"] == "Success", {k: v for k, v in r.items() if k != "cells"}
    kept = [len(c["stdout"]) for c in r["cells"][:12]]
    assert kept[:10] == [(3 << 20) + 1] * 10 and 0 < kept[10] < 3 << 20 and kept[11] == 0, kept
    assert [c["truncated"] for c in r["cells"][9:]] == [False, True, True, True, True]
    assert base64.b64decode(r["files"]["ran"]) == b"yes"
    # The last cell's failure is still told, in short.
    [error] = r["cells"][-1]["error"]
    assert error["ename"] == "ValueError" and error["evalue"] == "v" * 1024 and error["traceback"] == []


def test_a_notebook_message_beyond_the_cap_is_read_past_and_the_kernel_lives_on(endpoint):
    # Each is one iopub message far larger than the 4 MiB cap: read past, never held whole.
    # Of the print, its first text is kept, as a program's would be; the display is dropped.
    huge_print = "x = 41\nprint('é' + 'z' * (100 << 20), end='')"
    huge_display = "from IPython.display import display\ndisplay({'text/plain': 'y' * (100 << 20)}, raw=True)"
    # An error's message is in its traceback too: the cell still says it failed, and how.
    huge_error = "raise KeyError('k' * (20 << 20))"
    cells = [huge_print, huge_display, huge_error, "print(x + 1)"]
    r = requests.post(f"{endpoint}/run_jupyter", json={"cells": cells}).json()
    assert r["status"] == "Success", {k: v for k, v in r.items() if k != "cells"}
    first = r["cells"][0]
    kept = first["stdout"]
    assert (4 << 20) - 4096 < len(kept.encode()) <= 4 << 20 and kept == "é" + "z" * (len(kept) - 1), len(kept)
    assert first["truncated"] and first["display"] == [] and first["error"] == []
    assert [(c["stdout"], c["display"], c["error"], c["truncated"]) for c in r["cells"][1:]] == [
        ("", [], [], True),
        ("", [], [{"ename": "KeyError", "evalue": "'" + "k" * 1023, "traceback": []}], True),
        ("42\n", [], [], False)]


def test_deterministic_request_errors_fail_fast_without_retries(endpoint):
    started = time.time()
    # With the client's default of 5 attempts, a retried answer would take ~15 s.
    bad_b64 = run_code(RunCodeRequest(code="print(1)", language="python", files={"x": "%%%not base64"}))
    outside = run_code(RunCodeRequest(code="print(1)", language="python", files={"/proc/self/x": b64("x")}))
    # Over the server's 64 MiB body limit: refused before it is read.
    oversized = run_code(RunCodeRequest(code="#" * (65 << 20), language="python"))
    notebook = run_jupyter(RunJupyterRequest(cells=["#" * (65 << 20)]))
    assert time.time() - started < 5
    assert bad_b64.status == "Failed" and "base64" in bad_b64.message
    assert outside.status == "Failed" and "/proc/self/x" in outside.message
    assert oversized.status == "Failed" and "limit" in oversized.message and oversized.run_result is None
    assert notebook.status == "Failed" and "limit" in notebook.message and notebook.cells == []


def test_notebook_kernels_fork_from_a_zygote_and_stay_confined(endpoint):
    """Once warm, kernels fork from a zygote that has imported ipykernel, numpy, pandas and
    matplotlib: the same confinement, interrupts still reach them, each draws its own random
    numbers, and matplotlib keeps its files under the sandbox's home."""
    probe = ("import os, sys\nstatus = open('/proc/self/status').read()\n"
             "field = lambda k: status.split(k + ':')[1].split()[0]\n"
             "print(os.getppid(), field('Uid'), field('CapEff'), field('NoNewPrivs'), field('Seccomp'),\n"
             "      all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib.pyplot')))")
    deadline = time.time() + 60
    draws = set()
    while len(draws) < 2:
        r = requests.post(f"{endpoint}/run_jupyter", json={
            "cells": [probe, "while True: pass", "print('after')",
                      "import matplotlib, numpy; print(matplotlib.get_cachedir(), numpy.random.rand())"],
            "cell_timeout": 1}).json()
        assert r["status"] == "Success", r
        ppid, uid, capeff, no_new_privs, seccomp, preloaded = r["cells"][0]["stdout"].split()
        assert (uid, capeff, no_new_privs, seccomp) == (uid, "0000000000000000", "1", "2") and uid != "0", r
        assert r["cells"][1]["error"][0]["ename"] == "KeyboardInterrupt", r
        assert r["cells"][2]["stdout"] == "after\n", r
        # Its parent is outside the sandbox: forked from a zygote (the plain one until the
        # kernels' own is warm).
        if ppid == "0" and preloaded == "True":
            cache, draw = r["cells"][3]["stdout"].split()
            assert cache == "/home/user/.cache/matplotlib", r
            draws.add(draw)
            continue
        assert time.time() < deadline, "no kernel came from the kernels' zygote"
        time.sleep(0.5)


def test_a_cell_that_ends_the_kernel_fails_the_notebook_without_retries(endpoint):
    """Killing the kernel is the cell's own doing: the client gets `Failed` at once (it would
    retry a `SandboxError`), with the cells that ran, the dying one last."""
    started = time.time()
    r = run_jupyter(RunJupyterRequest(cells=["print(1)", "import os\nos.kill(os.getpid(), 9)", "print(3)"]))
    assert time.time() - started < 10
    assert r.status == "Failed", r
    assert "killed by signal 9" in r.message
    assert r.driver.return_code == -9
    assert len(r.cells) == 2 and r.cells[0].stdout == "1\n", r
    assert r.cells[1].error[0]["ename"] == "DeadKernelError"
    r = requests.post(f"{endpoint}/run_jupyter", json={
        "cells": ["x = bytearray(1 << 30)"], "memory_limit_MB": 256}).json()
    assert r["status"] == "Failed" and r["driver"]["oom_killed"] is True, r


def test_a_server_with_an_api_token_takes_it_from_the_endpoint_url():
    """The client has no way to send headers; an endpoint `http://user:token@host:port` is
    how it carries a token (requests and aiohttp both send it as Basic auth)."""
    from conftest import Server
    from sandbox_fusion import run_code_async

    server = Server(token="s3cret")
    try:
        endpoint = server.url.replace("http://", "http://cella:s3cret@")
        hello = RunCodeRequest(code="print(6 * 7)", language="python")
        assert run_code(hello, endpoint=endpoint).run_result.stdout == "42\n"
        assert asyncio.run(run_code_async(hello, endpoint=endpoint)).run_result.stdout == "42\n"
        notebook = run_jupyter(RunJupyterRequest(cells=["6 * 7"]), endpoint=endpoint)
        assert notebook.cells[0].display == [{"text/plain": "42"}], notebook
        for wrong in (server.url, server.url.replace("http://", "http://cella:nope@")):
            # The client raises a bare Exception for any answer but a 200.
            with pytest.raises(Exception, match="responded with code 401"):
                run_code(hello, endpoint=wrong, max_attempts=1)
    finally:
        server.stop()
