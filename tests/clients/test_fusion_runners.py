"""SandboxFusion's own runner tests, replayed through the real client: every case of its
`sandbox/tests/runners` (data/sandboxfusion_runner_cases.json holds each request and the
assertions its test makes on the result). A language this server has no toolchain for must
answer at once that it is unavailable, instead of running the case."""

import base64  # noqa: F401  (the assertions use it)
import concurrent.futures
import json
import pathlib
import time

import pytest
import requests
from sandbox_fusion import (CommandRunStatus, RunCodeRequest, RunJupyterRequest, RunStatus,  # noqa: F401
                            run_code, run_jupyter)

CASES = json.loads((pathlib.Path(__file__).parent / "data" / "sandboxfusion_runner_cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def unavailable(endpoint):
    langs = requests.get(f"{endpoint}/api/v1/languages", timeout=120).json()
    return {lang["name"] for lang in langs if not lang["available"]}


def send(step):
    if step["route"] == "run_jupyter":
        return run_jupyter(RunJupyterRequest(**step["request"]), max_attempts=1)
    return run_code(RunCodeRequest(**step["request"]), max_attempts=1)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['suite']}-{c['name']}" for c in CASES])
def test_sandboxfusion_runner_case(endpoint, unavailable, case):
    for step in case["steps"]:
        if step["request"].get("language") in unavailable:
            started = time.time()
            result = send(step)
            assert result.status == RunStatus.Failed and result.run_result.return_code == 127
            assert "no toolchain" in result.message and time.time() - started < 2
            continue
        # A case SandboxFusion sends twice at once (the same port bound in two sandboxes).
        at_once = case.get("at_once", 1)
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            results = list(pool.map(lambda _: send(step), range(at_once)))
        assert step["asserts"], "every step asserts something"
        for result in results:
            for check in step["asserts"]:
                assert eval(check), f"{check}\n{result}"


# The packages of SandboxFusion's Python runtime this server installs (scripts/setup.sh), by
# the names code imports them as.
PYTHON_PACKAGES = [
    "requests", "requests_toolbelt", "flask", "werkzeug", "django", "wtforms", "flask_wtf", "flask_restful",
    "flask_sqlalchemy", "flask_caching", "flask_limiter", "bs4", "lxml", "shapely", "xlrd", "xlwt", "plotly",
    "openpyxl", "xlsxwriter", "Cryptodome", "statsmodels", "sklearn", "skimage", "xgboost", "git", "redis", "pika",
    "pymongo", "mongomock", "graphene", "pytest_mock", "pytest_cov", "psutil", "jwt", "nltk", "pulp", "docx",
    "PyPDF2", "fitz", "apscheduler", "colorama", "tqdm", "seaborn", "networkx", "sympy", "xarray", "astor",
    "gmpy2", "toml", "yaml", "docker", "pydantic", "numpy", "pandas", "scipy", "matplotlib", "PIL", "pytest",
    "cryptography",
]


def test_the_python_runtime_imports_what_sandboxfusion_code_imports(endpoint):
    code = ("import importlib\nmissing = []\n"
            f"for name in {PYTHON_PACKAGES!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as e:\n        missing.append(f'{name}: {e}')\n"
            "print('missing:', missing)\n")
    result = run_code(RunCodeRequest(language="python", code=code, run_timeout=60), max_attempts=1)
    assert result.run_result.stdout.strip() == "missing: []", result.run_result.stdout + result.run_result.stderr
    sklearn = run_code(RunCodeRequest(language="python", run_timeout=60, code=(
        "from sklearn.linear_model import LinearRegression\nimport numpy as np\n"
        "m = LinearRegression().fit(np.array([[1], [2], [3]]), np.array([2, 4, 6]))\n"
        "print(round(float(m.predict(np.array([[4]]))[0]), 3))")), max_attempts=1)
    assert sklearn.run_result.stdout.strip() == "8.0"
