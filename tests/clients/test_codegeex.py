"""The CodeGeeX4 face against a real server: the assertions of CodeGeeX4's own
`interpreter_demo/sandbox_tests.py` (its responses validated by the models its server
declares, re-declared here), and the demo app's flow: upload a CSV to /mnt/data, read it
with pandas, plot, get the PNG, download what the code wrote."""

import base64
import os
import re
import time
import urllib.parse
from typing import List, Union

import pytest
import requests
from pydantic import BaseModel


# The models of CodeGeeX4's sandbox.py, which its tests bind the answers to.
class ExecutionEventStream(BaseModel):
    stream: str
    text: str


class ExecutionEventDisplayData(BaseModel):
    variants: dict


class ExecutionEventError(BaseModel):
    ename: str
    evalue: str
    traceback: list[str]


class ExecutionEvent(BaseModel):
    type: str
    timestamp: str
    data: Union[ExecutionEventStream, ExecutionEventDisplayData, ExecutionEventError]


class ExecuteResponse(BaseModel):
    status: str
    events: List[ExecutionEvent]


class Error(BaseModel):
    error: str


RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="module")
def base(server):
    return server.url + "/"


def execute(base, code, timeout_secs=10):
    r = requests.post(base + "execute", json={"code": code, "timeout_secs": timeout_secs})
    assert r.status_code == 200, r.text
    return ExecuteResponse.model_validate_json(r.content)


# --- sandbox_tests.py: TestExecuteHandler ---------------------------------------------------


def test_execute_hello(base):
    res = execute(base, "print('hello')")
    assert len(res.events) == 1
    assert res.events[0].type == "stream"
    assert res.events[0].data.stream == "stdout"
    assert res.events[0].data.text == "hello\n"
    assert RFC3339_MICROS.match(res.events[0].timestamp)


def test_execute_timeout(base):
    started = time.time()
    res = execute(base, "import time\ntime.sleep(5)", timeout_secs=1)
    assert len(res.events) == 0
    assert res.status == "timeout"
    # Unlike the original, the kernel was interrupted: the next call runs at once.
    res = execute(base, "print('next')")
    assert res.events[0].data.text == "next\n"
    assert time.time() - started < 4


def test_execute_syntax_error(base):
    err = execute(base, "print('hello'")
    assert err.status == "ok"
    assert len(err.events) == 1
    assert err.events[0].type == "error"
    assert err.events[0].data.ename == "SyntaxError"
    assert err.events[0].data.evalue is not None
    assert len(err.events[0].data.traceback) > 0


def test_execute_invalid_timeout(base):
    for bad in (-1, 0, "soon"):
        r = requests.post(base + "execute", json={"code": "print('hello')", "timeout_secs": bad})
        assert r.status_code == 400
        Error.model_validate_json(r.content)
    r = requests.post(base + "execute", data=b"not json")
    assert r.status_code == 400
    Error.model_validate_json(r.content)


def only_image(res):
    """The variants of a call's one event: a display with an image and its text."""
    assert res.status == "ok"
    assert len(res.events) == 1
    assert res.events[0].type == "display_data"
    variants = res.events[0].data.variants
    assert variants["image/png"] is not None
    assert variants["text/plain"] is not None
    return variants


def test_execute_display_data(base):
    code = """import matplotlib.pyplot as plt
plt.plot([1, 2, 3, 4])
plt.ylabel('some numbers')
plt.show()"""
    variants = only_image(execute(base, code))
    assert base64.b64decode(variants["image/png"]).startswith(b"\x89PNG")


def test_execute_pil_image(base):
    code = """from PIL import Image
img = Image.new('RGB', (60, 30), color = 'red')

# Override the show method of the Image class
def new_show(self, *args, **kwargs):
    display(self)

Image.Image.show = new_show

img.show()"""
    only_image(execute(base, code))


def test_timeout_is_optional_and_results_are_display_data(base):
    r = requests.post(base + "execute", json={"code": "6 * 7"})
    assert r.status_code == 200
    res = ExecuteResponse.model_validate_json(r.content)
    assert [e.type for e in res.events] == ["display_data"]
    assert res.events[0].data.variants == {"text/plain": "42"}


def test_stream_events_carry_name_stream_and_text(base):
    """The docs say `name`, the server and its tests `stream`, and the demo app reads `text`
    at the top of the event: all three are there."""
    body = requests.post(base + "execute", json={"code": "import sys; print('e', file=sys.stderr)"}).json()
    event = body["events"][0]
    assert event["data"] == {"name": "stderr", "stream": "stderr", "text": "e\n"}
    assert event["text"] == "e\n"


# --- sandbox_tests.py: FileUploadHandlerTest ---------------------------------------------------


def upload(base, path, data):
    return requests.post(base + "files/upload/-" + path, data=data)


def download(base, path):
    return requests.get(base + "files/download/-" + path)


def test_upload_file(base):
    large_binary_file = os.urandom(1024 * 1024 * 10)  # 10 MB
    r = upload(base, "/tmp/uploads/test.txt", large_binary_file)
    assert r.status_code == 201
    got = download(base, "/tmp/uploads/test.txt")
    assert got.status_code == 200
    assert got.content == large_binary_file
    assert got.headers["content-length"] == str(len(large_binary_file))


def test_upload_existing_file_replaces_it(base):
    """The original's docs and tests want 409; its server (and the demo app, which asserts
    201 on every upload) overwrite. cella overwrites."""
    assert upload(base, "/tmp/uploads/existing.txt", b"exists").status_code == 201
    assert upload(base, "/tmp/uploads/existing.txt", b"replaced").status_code == 201
    assert download(base, "/tmp/uploads/existing.txt").content == b"replaced"


def test_directory_creation(base):
    r = upload(base, "/tmp/uploads/newdir/deeper/test.txt", b"test content")
    assert r.status_code == 201
    assert download(base, "/tmp/uploads/newdir/deeper/test.txt").content == b"test content"


def test_download_missing_and_odd_paths(base):
    r = download(base, "/tmp/uploads/nope.txt")
    assert r.status_code == 404
    assert Error.model_validate_json(r.content).error == "file not found"
    assert upload(base, "/tmp/uploads/a-dir/f.txt", b"f").status_code == 201
    r = download(base, "/tmp/uploads/a-dir")
    assert r.status_code == 400 and Error.model_validate_json(r.content)
    # Out of the sandbox by `..` or a symlink: still inside it.
    execute(base, "import os\nos.makedirs('/tmp/links', exist_ok=True)\nos.symlink('/etc/shadow', '/tmp/links/s')")
    r = download(base, "/tmp/links/s")
    assert r.status_code != 200 or b"root:" not in r.content
    r = requests.get(base + "files/download/-/tmp/../../../etc/hostname")
    assert r.status_code in (200, 404)
    assert r.status_code == 404 or r.text.startswith("sandbox-")


# --- The rest of the wire ----------------------------------------------------------------------


def test_ping_reports_last_activity(base):
    r = requests.get(base)
    assert r.status_code == 200
    first = r.json()["last_activity"]
    assert RFC3339_MICROS.match(first)
    time.sleep(0.05)
    execute(base, "1")
    assert requests.get(base).json()["last_activity"] > first


def test_a_sandbox_by_id_and_under_its_own_base_url(server):
    sandbox = requests.post(server.url + "/api/v1/sandboxes", json={}).json()["id"]
    prefixed = f"{server.url}/codegeex/{sandbox}/"
    assert requests.get(prefixed).status_code == 200
    res = execute(prefixed, "import os\nx = 1\nos.getcwd(), os.environ['HOME']")
    assert res.events[0].data.variants["text/plain"] == "('/mnt/data', '/mnt/data')"
    assert upload(prefixed, "/mnt/data/here.txt", b"mine").status_code == 201
    # The same sandbox through the unprefixed face, naming it instead of `-`.
    r = requests.get(f"{server.url}/files/download/{sandbox}/mnt/data/here.txt")
    assert r.content == b"mine"
    assert execute(prefixed, "x").events[0].data.variants["text/plain"] == "1"
    # The default sandbox is another one.
    assert download(server.url + "/", "/mnt/data/here.txt").status_code == 404
    requests.delete(f"{server.url}/api/v1/sandboxes/{sandbox}")
    r = requests.post(prefixed + "execute", json={"code": "1"})
    assert r.status_code == 404 and Error.model_validate_json(r.content)


def test_the_demo_apps_flow(base):
    """interpreter_demo/app.py: files go to /mnt/data, code reads them with pandas and plots;
    the model's `sandbox:/mnt/data/x` links become downloads."""
    csv = "city,temp\nBeijing,12\nShanghai,18\nShenzhen,25\n"
    assert upload(base, "/mnt/data/weather.csv", csv.encode()).status_code == 201
    code = """import pandas as pd
import matplotlib.pyplot as plt
df = pd.read_csv('/mnt/data/weather.csv')
print(df.temp.mean())
df.plot.bar(x='city', y='temp')
plt.savefig('temps.png')
plt.show()
df.to_csv('hottest.csv', index=False)"""
    body = requests.post(base + "execute", json={"code": code, "timeout_secs": 60}).json()
    assert body["status"] == "ok", body
    kinds = [e["type"] for e in body["events"]]
    assert kinds[:2] == ["stream", "display_data"], kinds
    assert body["events"][0]["data"]["text"] == "18.333333333333332\n"
    png = body["events"][1]["data"]["variants"]["image/png"]
    assert base64.b64decode(png).startswith(b"\x89PNG")
    # The files the code wrote, relative to /mnt/data, as the original's docs show them.
    files = {e["data"]["path"]: e["data"]["size"] for e in body["events"] if e["type"] == "file"}
    assert set(files) == {"temps.png", "hottest.csv"}, body["events"]
    r = download(base, "/mnt/data/hottest.csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''hottest.csv"
    assert r.text.splitlines()[0] == "city,temp"
    assert int(download(base, "/mnt/data/temps.png").headers["content-length"]) == files["temps.png"]


def test_download_names_are_percent_encoded(base):
    name = "résumé final.txt"
    assert upload(base, "/mnt/data/" + urllib.parse.quote(name), b"x").status_code == 201
    r = download(base, "/mnt/data/" + urllib.parse.quote(name))
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.txt"


def test_a_dead_kernel_says_so_and_the_next_call_runs(base):
    body = requests.post(base + "execute", json={"code": "import os; os._exit(1)"}).json()
    assert body["events"][-1]["data"]["ename"] == "DeadKernelError"
    assert execute(base, "print(2)").events[0].data.text == "2\n"
