"""SandboxFusion's evaluation half through the real `sandbox-fusion` client: datasets, prompts,
submit and submit_safe (sync and async), run_concurrent, metrics; each dataset class with rows
written here (`provided_data`), HumanEval from the server's own copy, and hostile completions.
Assertions follow SandboxFusion's own `sandbox/tests/datasets` where it has them."""

import asyncio
import json
import time

import pytest
import requests
from sandbox_fusion import (EvalResult, GetPromptByIdRequest, GetPromptsRequest, SubmitRequest, TestConfig,
                            get_prompt_by_id, get_prompt_by_id_async, get_prompts, get_prompts_async,
                            run_concurrent, submit, submit_async, submit_safe)


def sub(dataset, completion, id=0, **config):
    return SubmitRequest(dataset=dataset, id=id, completion=completion, config=TestConfig(**config))


def post(endpoint, route, body):
    return requests.post(f"{endpoint}/{route}", json=body, timeout=120)


# --- datasets and prompts -------------------------------------------------------------------

def test_list_datasets_names_the_registered_ids(endpoint):
    ids = requests.get(f"{endpoint}/list_datasets").json()
    for expected in ("humaneval_python", "mbpp", "code_contests", "cruxeval", "live_code_bench_v1",
                     "multiple_cpp", "multiple_js", "humaneval_go"):
        assert expected in ids
    assert len(ids) == len(set(ids))


def test_humaneval_prompts_page_and_ids(endpoint):
    prompts = get_prompts(GetPromptsRequest(dataset="humaneval_python", config=TestConfig()))
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0" and prompts[163].id == "HumanEval/163"
    assert prompts[0].prompt.startswith("from typing import List")
    assert set(prompts[0].labels) >= {"task_id", "entry_point", "test", "canonical_solution"}
    assert "prompt" not in prompts[0].labels

    page = get_prompts(GetPromptsRequest(dataset="humaneval_python", config=TestConfig(), offset=10, limit=3))
    assert [p.id for p in page] == ["HumanEval/10", "HumanEval/11", "HumanEval/12"]
    ids = post(endpoint, "list_ids", {"dataset": "humaneval_python", "config": {}, "limit": 2}).json()
    assert ids == ["HumanEval/0", "HumanEval/1"]

    one = get_prompt_by_id(GetPromptByIdRequest(dataset="humaneval_python", id="HumanEval/7", config=TestConfig()))
    assert one.id == "HumanEval/7" and one.prompt == prompts[7].prompt
    freeform = get_prompt_by_id(GetPromptByIdRequest(dataset="humaneval_python", id="HumanEval/7",
                                                     config=TestConfig(extra={"is_freeform": True})))
    assert freeform.prompt.startswith("```python\n" + prompts[7].prompt)
    assert "wrap it in markdown syntax" in freeform.prompt
    zh = get_prompt_by_id(GetPromptByIdRequest(dataset="humaneval_python", id="HumanEval/7",
                                               config=TestConfig(locale="zh", extra={"is_freeform": True})))
    assert "markdown" in zh.prompt and "docstring" in zh.prompt and "Please" not in zh.prompt


def test_unknown_datasets_classes_and_ids_are_clear_errors(endpoint):
    r = post(endpoint, "get_prompts", {"dataset": "nope", "config": {}})
    assert r.status_code == 400 and r.json() == {"detail": "no eval class found for dataset nope"}
    r = post(endpoint, "submit", {"dataset": "nope", "id": 0, "completion": "", "config": {"dataset_type": "Foo"}})
    assert r.status_code == 400 and r.json() == {"detail": "eval class Foo not found"}
    r = post(endpoint, "get_prompt_by_id", {"dataset": "humaneval_python", "id": "HumanEval/999", "config": {}})
    assert r.status_code == 404 and "HumanEval/999" in r.json()["detail"]
    # A registered id whose rows this server does not hold says where they can come from.
    r = post(endpoint, "get_prompts", {"dataset": "mbpp", "config": {}})
    assert r.status_code == 404 and "provided_data" in r.json()["detail"]
    # Bodies of the wrong shape are FastAPI's 422s.
    r = post(endpoint, "submit", {"dataset": "mbpp", "id": 0, "config": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "completion"]
    r = post(endpoint, "submit", {"dataset": "mbpp", "id": [1], "completion": "", "config": {"extra": 3}})
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("body", "id"), ("body", "config", "extra")}
    # submit_safe turns any failure into a rejected result instead of raising.
    safe = submit_safe(sub("nope", "x"), max_attempts=1)
    assert safe.accepted is False and safe.tests == []
    with pytest.raises(Exception, match="400"):
        submit(sub("nope", "x"), max_attempts=1)


# --- HumanEval: its canonical solutions, empty completions and hostile ones -------------------

@pytest.fixture(scope="module")
def humaneval(endpoint):
    return get_prompts(GetPromptsRequest(dataset="humaneval_python", config=TestConfig()))


def test_all_164_canonical_solutions_pass_and_empty_completions_fail(humaneval):
    started = time.time()
    canonical = run_concurrent(submit, args=[[sub("humaneval_python", p.labels["canonical_solution"], id=p.id)]
                                             for p in humaneval], concurrency=16)
    assert [r.id for r in canonical] == [p.id for p in humaneval]
    failed = [(r.id, r.tests[0].exec_info.run_result.stderr[-300:]) for r in canonical if not r.accepted]
    assert failed == []
    empty = run_concurrent(submit, args=[[sub("humaneval_python", "", id=p.id)] for p in humaneval],
                           concurrency=16)
    assert [r.id for r in empty if r.accepted] == []
    print(f"HumanEval: 2 x 164 submissions in {time.time() - started:.1f} s")


HOSTILE = {
    "exit(0) before the tests run": "    exit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "SystemExit": "    raise SystemExit(0)\n",
    "sys.exit through sys.modules": "    import sys\n    sys.modules['sys'].exit(0)\n",
    "redefining check": "    return True\ndef check(candidate):\n    pass\n",
    "replacing check through sys.modules": "    import sys\n    sys.modules['__main__'].check = lambda c: None\n    return True\n",
    "a stray print of a likely marker": "    print('cella-tests-ran-to-the-end')\n    exit(0)\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_completions_that_cut_the_tests_short_do_not_pass(humaneval, name):
    r = submit(sub("humaneval_python", HOSTILE[name], id="HumanEval/0"), max_attempts=1)
    assert r.accepted is False, name
    assert r.tests[0].passed is False


def test_the_canonical_answer_passes_beside_them(humaneval):
    r = submit(sub("humaneval_python", humaneval[0].labels["canonical_solution"], id="HumanEval/0"))
    assert r.accepted and r.full_code.rstrip().splitlines()[-2] == "check(has_close_elements)"
    assert r.extracted_code == humaneval[0].labels["canonical_solution"]


def test_freeform_and_provided_humaneval_rows(humaneval):
    # As SandboxFusion's own test: a row sent with the request, completions with a trailing
    # `def random` (cut by HumanEval's stop token) and a fenced freeform answer.
    for p in humaneval[:5]:
        row = dict(p.labels, prompt=p.prompt)
        solution = p.labels["canonical_solution"]
        r = submit(sub("my_humaneval", solution + "\n\ndef random", dataset_type="HumanEvalDataset",
                       provided_data=row))
        assert r.accepted, r.id
        r = submit(sub("humaneval_python", f"Here is your answer:\n```python\n{p.prompt}\n{solution}\n```",
                       provided_data=row, extra={"is_freeform": True}))
        assert r.accepted, r.id
        # Under another id the freeform answer is cut at HumanEval's stop token, as SandboxFusion
        # cuts it: only its registered HumanEval ids take whole functions.
        r = submit(sub("my_humaneval", f"```python\n{p.prompt}\n{solution}\n```",
                       dataset_type="HumanEvalDataset", provided_data=row, extra={"is_freeform": True}))
        assert not r.accepted, r.id
    wrong = "    mean = max(numbers) / len(numbers)\n    return sum(abs(x - mean) for x in numbers) / len(numbers)\n"
    r = submit(sub("humaneval_python", wrong, id="HumanEval/4"))
    assert not r.accepted and r.tests[0].exec_info.status == "Failed"


def test_a_ten_megabyte_completion_is_graded_not_crashed(endpoint):
    big = "    return False\n" + "#" * (10 << 20)
    r = post(endpoint, "submit", {"dataset": "humaneval_python", "id": "HumanEval/0", "completion": big,
                                  "config": {}})
    assert r.status_code == 200
    assert r.json()["accepted"] is False


def test_async_client_variants(endpoint):
    async def flow():
        prompts, one = await asyncio.gather(
            get_prompts_async(GetPromptsRequest(dataset="humaneval_python", config=TestConfig(), limit=2)),
            get_prompt_by_id_async(GetPromptByIdRequest(dataset="humaneval_python", id="HumanEval/2",
                                                        config=TestConfig())))
        results = await asyncio.gather(*[submit_async(sub("humaneval_python", p.labels["canonical_solution"],
                                                          id=p.id)) for p in prompts])
        return prompts, one, results
    prompts, one, results = asyncio.run(flow())
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"] and one.id == "HumanEval/2"
    assert [r.accepted for r in results] == [True, True]


# --- MBPP --------------------------------------------------------------------------------------

MBPP_ROW = {
    "id": 11, "content": "Write a python function to remove first and last occurrence of a given character.",
    "labels": json.dumps({"test_setup_code": "import re"}),
    "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                  'assert remove_Occ("PHP","P") == "H"'],
}
MBPP_SOLUTION = ("def remove_Occ(s, ch):\n    first = s.find(ch)\n    s = s[:first] + s[first + 1:]\n"
                 "    last = s.rfind(ch)\n    return s[:last] + s[last + 1:]\n")


def test_mbpp_prompts_and_grading(endpoint):
    prompts = get_prompts(GetPromptsRequest(dataset="mbpp", config=TestConfig(provided_data=[MBPP_ROW])))
    assert prompts[0].id == 11 and prompts[0].labels == {"test_setup_code": "import re"}
    assert prompts[0].prompt.endswith('assert remove_Occ("PHP","P") == "H"')
    fewshot = get_prompt_by_id(GetPromptByIdRequest(dataset="mbpp", id=11,
                                                    config=TestConfig(provided_data=MBPP_ROW, is_fewshot=True)))
    assert fewshot.prompt.endswith('assert remove_Occ("abcda","a") == "bcd"\n[BEGIN]\n')
    assert fewshot.prompt.count("[DONE]") == 3

    good = submit(sub("mbpp", f"```python\n{MBPP_SOLUTION}assert remove_Occ('x', 'x') == ''\n```\n[DONE] chatter",
                      id=11, provided_data=MBPP_ROW))
    assert good.accepted, good.tests[0].exec_info
    assert good.extracted_code.startswith("import re\ndef remove_Occ") and "assert" not in good.extracted_code
    assert good.full_code.count("assert remove_Occ") == 3
    bad = submit(sub("mbpp", "def remove_Occ(s, ch):\n    return s\n", id=11,
                     provided_data=MBPP_ROW))
    assert not bad.accepted
    # Few-shot grades only the last test (the others were in the prompt).
    only_last = submit(sub("mbpp", "def remove_Occ(s, ch):\n    return 'H'\n", id=11, provided_data=MBPP_ROW,
                           is_fewshot=True))
    assert only_last.accepted
    early_exit = submit(sub("mbpp", "import sys\nsys.exit(0)\n", id=11, provided_data=MBPP_ROW))
    assert not early_exit.accepted


# --- CommonOJ: standard input cases ------------------------------------------------------------

def oj_row(cases):
    return {"id": 5, "content": "Read two integers and print their sum.", "labels": {"tag": "math"},
            "test": json.dumps([{"input": {"stdin": i}, "output": {"stdout": o}} for i, o in cases])}


OJ_ROW = oj_row([("1 2\n", "3\n"), ("10 20\n", "30"), ("-1 1\n", "0\n"), ("5 5\n", "10\n")])


def test_common_oj_prompt(endpoint):
    p = get_prompts(GetPromptsRequest(dataset="code_contests", config=TestConfig(language="cpp",
                                                                                 provided_data=[OJ_ROW])))[0]
    assert p.id == 5 and p.labels == {"tag": "math"}
    assert p.prompt.startswith("Read two integers") and "including a main function in C++" in p.prompt


def test_common_oj_cases_compare_and_stop_at_the_first_failure(endpoint):
    py = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    r = submit(sub("code_contests", py, id=5, language="python", provided_data=OJ_ROW))
    assert r.accepted and len(r.tests) == 4 and all(t.passed for t in r.tests)
    assert r.tests[1].test_info == {"input": {"stdin": "10 20\n"}, "output": {"stdout": "30"}}

    cpp = ("```cpp\n#include <iostream>\nint main() { long a, b; std::cin >> a >> b;"
           " std::cout << (a == 10 ? -1 : a + b) << std::endl; }\n```")
    r = submit(sub("code_contests", cpp, id=5, language="cpp", provided_data=OJ_ROW))
    assert not r.accepted and [t.passed for t in r.tests] == [True, False]
    assert r.tests[0].exec_info.compile_result.status == "Finished"
    r = submit(sub("code_contests", cpp, id=5, language="cpp", provided_data=OJ_ROW, extra={"run_all_cases": True}))
    assert [t.passed for t in r.tests] == [True, False, True, True]

    # Lines stripped, compared without case, numbers within a relative 1e-5.
    loose = oj_row([("x\n", "YES\n0.3333333333\n")])
    r = submit(sub("code_contests", "```python\nprint(' yes ')\nprint(1/3)\n```", language="python",
                   provided_data=loose))
    assert r.accepted
    r = submit(sub("code_contests", "```python\nprint('yes')\nprint(0.33)\n```", language="python",
                   provided_data=loose))
    assert not r.accepted


def test_common_oj_needs_a_language_and_well_formed_cases(endpoint):
    r = post(endpoint, "submit", {"dataset": "code_contests", "id": 5, "completion": "x",
                                  "config": {"provided_data": OJ_ROW}})
    assert r.status_code == 400
    assert r.json()["detail"] == "config.language field must exist for CommonOJDataset, got None"
    r = post(endpoint, "submit", {"dataset": "code_contests", "id": 5, "completion": "x",
                                  "config": {"language": "python", "provided_data": {"id": 5, "test": "[{}]"}}})
    assert r.status_code == 400 and "input.stdin" in r.json()["detail"]
    r = post(endpoint, "submit", {"dataset": "code_contests", "id": 5, "completion": "x",
                                  "config": {"language": "python", "provided_data": {"id": 5}}})
    assert r.status_code == 400 and "test" in r.json()["detail"]


def test_custom_extract_logic_runs_in_a_sandbox(endpoint, tmp_path):
    logic = ("import re\n"
             "m = re.search(r'<code>(.*?)</code>', completion, re.S)\n"
             "submit_code_blocks([CodeBlock(priority=40, code=m.group(1), language='python')])\n")
    completion = "```python\nprint(0)\n```\n<code>a, b = map(int, input().split()); print(a + b)</code>"
    r = submit(sub("code_contests", completion, id=5, language="python", provided_data=OJ_ROW,
                   custom_extract_logic=logic))
    assert r.accepted and r.extracted_code.startswith("a, b = map(int")
    # The helpers SandboxFusion gives the logic are there.
    helpers = "submit_code_blocks([b for b in extract_fenced_code(completion) if b.language == 'python'])\n"
    two = "```bash\necho 3\n```\n```python\na, b = map(int, input().split()); print(a + b)\n```"
    assert submit(sub("code_contests", two, id=5, language="python", provided_data=OJ_ROW,
                      custom_extract_logic=helpers)).accepted

    # Hostile logic: it runs as sandboxed user code, never in the server.
    marker = tmp_path / "touched"
    attack = f"open({str(marker)!r}, 'w').write('x')\nsubmit_code_blocks([])\n"
    submit_safe(sub("code_contests", "x", id=5, language="python", provided_data=OJ_ROW,
                    custom_extract_logic=attack), max_attempts=1)
    assert not marker.exists()
    started = time.time()
    r = post(endpoint, "submit", {"dataset": "code_contests", "id": 5, "completion": "x",
                                  "config": {"language": "python", "provided_data": OJ_ROW,
                                             "custom_extract_logic": "while True: pass"}})
    assert r.status_code == 400 and "custom_extract_logic failed" in r.json()["detail"]
    assert time.time() - started < 30
    r = post(endpoint, "submit", {"dataset": "code_contests", "id": 5, "completion": "x",
                                  "config": {"language": "python", "provided_data": OJ_ROW,
                                             "custom_extract_logic": "raise ValueError('nope')"}})
    assert r.status_code == 400 and "ValueError: nope" in r.json()["detail"]


# --- AutoEval (FullStackBench) ------------------------------------------------------------------

def autoeval_row(language, execution, test, asset=None):
    test = {"code": test}
    if asset:
        test["asset"] = asset
    return {"id": 0, "content": "Write proc().",
            "labels": json.dumps({"programming_language": language, "execution_language": execution}),
            "test": json.dumps(test)}


def test_autoeval_python_with_insert_and_assets(endpoint):
    import base64
    asset = {"data.csv": base64.b64encode(b"x\n1\n2\n3\n").decode()}
    row = autoeval_row("python", "python", "#<INSERT>\n\nassert proc() == 6\n", asset)
    good = ("```python\nimport pandas as pd\n\ndef proc():\n    return int(pd.read_csv('data.csv')['x'].sum())\n\n"
            'if __name__ == "__main__":\n    print(proc())\n```')
    r = submit(sub("fullstack", good, dataset_type="AutoEvalDataset", provided_data=row))
    assert r.accepted, r.tests[0].exec_info
    assert "__main__" not in r.extracted_code
    r = submit(sub("fullstack", good, dataset_type="AutoEvalDataset", provided_data=row,
                   extra={"append_flag": True}))
    assert r.accepted
    cut = submit(sub("fullstack", "```python\ndef proc():\n    exit(0)\n```", dataset_type="AutoEvalDataset",
                     provided_data=row, extra={"append_flag": True}))
    assert not cut.accepted
    # SandboxFusion's own extraction cases: the python block, not the bash one.
    r = submit(sub("fullstack", "```bash\nblah\n```\n\n```python\nlet a = 1;\n```", dataset_type="AutoEvalDataset",
                   provided_data=autoeval_row("python", "python", "")))
    assert not r.accepted and "let a = 1;" in r.extracted_code


def test_autoeval_jest_reports_each_case(endpoint):
    test = ("#<INSERT>\n\ndescribe('add', () => {\n  test('small', () => expect(add(1, 2)).toBe(3));\n"
            "  test('zero', () => expect(add(0, 0)).toBe(0));\n  test('wrong on purpose', () => expect(add(2, 2)).toBe(5));\n});\n")
    row = autoeval_row("javascript", "jest", test)
    r = submit(sub("fullstack", "```javascript\nfunction add(a, b) { return a + b; }\n```",
                   dataset_type="AutoEvalV4Dataset", provided_data=row))
    assert not r.accepted
    cases = r.extra["jest_cases"]
    assert sorted(c["passed"] for c in cases) == [False, True, True]
    assert {c["test"] for c in cases} == {"small", "zero", "wrong on purpose"} and cases[0]["suite"] == "add"


def test_autoeval_java_under_junit(endpoint):
    test = ("import org.junit.jupiter.api.Test;\nimport static org.junit.jupiter.api.Assertions.*;\n\n"
            "public class AdderTest {\n    @Test\n    void adds() {\n        assertEquals(5, new Adder().add(2, 3));\n    }\n}\n")
    row = autoeval_row("java", "junit", test)
    good = "```java\npublic class Adder {\n    public int add(int a, int b) {\n        return a + b;\n    }\n}\n```"
    r = submit(sub("fullstack", good, dataset_type="AutoEvalDataset", provided_data=row))
    assert r.accepted, r.tests[0].exec_info
    bad = good.replace("a + b", "a - b")
    assert not submit(sub("fullstack", bad, dataset_type="AutoEvalDataset", provided_data=row)).accepted


# --- MultiPL-E ----------------------------------------------------------------------------------

MULTIPLE = {
    "multiple_cpp": ({"name": "HumanEval_53_add", "language": "cpp",
                      "prompt": "#include<assert.h>\n#include<bits/stdc++.h>\n// Add two numbers x and y\nlong add(long x, long y) {\n",
                      "tests": "}\nint main() {\n    auto candidate = add;\n    assert(candidate((0), (1)) == (1));\n    assert(candidate((5), (7)) == (12));\n}\n",
                      "stop_tokens": ["\n}"]},
                     "    return x + y;\n}\n\nint main() { return 1; }", "    return x - y;\n}\n"),
    "multiple_js": ({"name": "HumanEval_53_add", "language": "js",
                     "prompt": "//Add two numbers x and y\nfunction add(x, y){\n",
                     "tests": "const assert = require('node:assert');\n\n\nfunction test() {\n  let candidate = add;\n  assert.deepEqual(candidate(0, 1),1);\n  assert.deepEqual(candidate(5, 7),12);\n}\n\ntest();",
                     "stop_tokens": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"]},
                    "  return x + y;\n}\n", "  return x * y;\n}\n"),
    "multiple_go": ({"name": "HumanEval_53_add", "language": "go_test.go",
                     "prompt": "package add_test\n\nimport (\n    \"testing\"\n    \"fmt\"\n)\n\n// Add two numbers x and y\nfunc add(x int, y int) int {\n",
                     "tests": "func TestAdd(t *testing.T) {\n  candidate := add\n  for i, tc := range []struct{ actual, expected interface{} }{\n    {candidate(0, 1), 1},\n    {candidate(5, 7), 12},\n  } {\n    t.Run(fmt.Sprintf(\"test num % d\", i), func(t *testing.T) {\n      if tc.actual != tc.expected { t.Errorf(\"got %v\", tc.actual) }\n    })\n  }\n}\n",
                     "stop_tokens": ["\nfunc", "struct", "\n// "]},
                    "    return x + y\n}\n", "    return x\n}\n"),
    "multiple_rs": ({"name": "HumanEval_53_add", "language": "rs",
                     "prompt": "/// Add two numbers x and y\nfn add(x: isize, y: isize) -> isize {\n",
                     "tests": "}\n\nfn main() {\n    let candidate = add;\n    assert_eq!(candidate(0, 1), 1);\n    assert_eq!(candidate(5, 7), 12);\n}\n",
                     "stop_tokens": ["\n}"]},
                    "    x + y\n}\n", "    x * y\n}\n"),
    "multiple_rb": ({"name": "HumanEval_53_add", "language": "rb",
                     "prompt": "# Add two numbers x and y\ndef add(x, y)\n",
                     "tests": "require 'test/unit'\nclass TestHumanEval < Test::Unit::TestCase\n  def test_add\n    candidate = method(:add)\n    assert_equal(1, candidate.call(0, 1))\n    assert_equal(12, candidate.call(5, 7))\n  end\nend\n",
                     "stop_tokens": ["\nclass", "\ndef", "\n#", "\n\n"]},
                    "  x + y\nend\n", "  x - y\nend\n"),
    "multiple_php": ({"name": "HumanEval_53_add", "language": "php",
                      "prompt": "<?php\n// Add two numbers x and y\nfunction add($x, $y) {\n",
                      "tests": "function candidate(...$args) {\n    return add(...$args);\n}\n\nfunction test(): void {\n    if (candidate(0, 1) !== 1) { throw new Exception(\"Test failed!\"); }\n    if (candidate(5, 7) !== 12) { throw new Exception(\"Test failed!\"); }\n}\n\ntest();",
                      "stop_tokens": ["\nfunction", "\n?>", "\n//", "\n#"]},
                     "    return $x + $y;\n}\n", "    return $x;\n}\n"),
    "multiple_lua": ({"name": "HumanEval_53_add", "language": "lua",
                      "prompt": "-- Add two numbers x and y\nlocal function add(x, y)\n",
                      "tests": "lu = require('luaunit')\n\nfunction test_humaneval()\nlocal candidate = add\n    lu.assertEquals(candidate(0, 1), 1)\n    lu.assertEquals(candidate(5, 7), 12)\nend\n\nos.exit(lu.LuaUnit.run())",
                      "stop_tokens": ["\nlocal", "\nfunction", "\n--", "\n\n"]},
                     "    return x + y\nend\n", "    return x * y\nend\n"),
    "multiple_pl": ({"name": "HumanEval_53_add", "language": "pl",
                     "prompt": "# Add two numbers x and y\nsub add {\n    my($x, $y) = @_;\n",
                     "tests": "use Test::Deep;\n\nsub testhumaneval {\n    my $candidate = \\&add;\n    if(eq_deeply($candidate->(0, 1),1)) { print \"ok!\" } else { exit 1; }\n    if(eq_deeply($candidate->(5, 7),12)) { print \"ok!\" } else { exit 1; }\n}\n\ntesthumaneval();",
                     "stop_tokens": ["\nsub", "\n#", "\n\n"]},
                    "    return $x + $y;\n}\n", "    return $x - $y;\n}\n"),
    "multiple_r": ({"name": "HumanEval_53_add", "language": "r",
                    "prompt": "# Add two numbers x and y\nadd <- function(x, y) {\n",
                    "tests": "test_humaneval <- function() {\ncandidate <- add\n    if(!identical(candidate(0, 1), 1)){quit('no', 1)}\n    if(!identical(candidate(5, 7), 12)){quit('no', 1)}\n}\ntest_humaneval()",
                    "stop_tokens": ["\n#", "\n```"]},
                   "    x + y\n}\n", "    x * y\n}\n"),
}


@pytest.mark.parametrize("dataset", MULTIPLE)
def test_multiple_pretrain_completions(endpoint, dataset):
    row, good, bad = MULTIPLE[dataset]
    prompt = get_prompt_by_id(GetPromptByIdRequest(dataset=dataset, id=0, config=TestConfig(provided_data=row)))
    assert prompt.id == "HumanEval_53_add" and prompt.prompt == row["prompt"]
    r = submit(sub(dataset, good, provided_data=row))
    assert r.accepted, (r.full_code, r.tests[0].exec_info)
    assert not submit(sub(dataset, bad, provided_data=row)).accepted


# HumanEval's other languages, in MultiPL-E's layout (the rows SandboxFusion's humaneval_<lang>
# tables hold).
HUMANEVAL_LANGUAGES = {
    "humaneval_typescript": ({"name": "HumanEval_53_add", "language": "ts",
                              "prompt": "//Add two numbers x and y\nfunction add(x: number, y: number): number {\n",
                              "tests": "declare var require: any;\nconst assert = require('node:assert');\n\n\nfunction test() {\n  let candidate = add;\n  assert.deepEqual(candidate(0, 1),1);\n  assert.deepEqual(candidate(5, 7),12);\n}\n\ntest();",
                              "stop_tokens": ["\nfunction ", "\n/*", "\n//", "\nclass"]},
                             "  return x + y;\n}\n", "  return x * y;\n}\n"),
    "humaneval_bash": ({"name": "HumanEval_53_add", "language": "sh",
                        "prompt": "#!/bin/bash\n# Add two numbers x and y\n#\n# $1 is an integer\n# $2 is an integer\nadd() {\n",
                        "tests": "}\n\ncandidate() {\n    add \"$@\"\n}\n\nset -e\nrun_test() {\n    [[ $(candidate \"0\" \"1\") = \"1\" ]]\n    [[ $(candidate \"5\" \"7\") = \"12\" ]]\n}\n\nrun_test",
                        "stop_tokens": ["\n}"]},
                       "    echo $(( $1 + $2 ))\n}\n", "    echo $(( $1 * $2 ))\n}\n"),
    "humaneval_java": ({"name": "HumanEval_53_add", "language": "java",
                        "prompt": "import java.util.*;\nclass Problem {\n    // Add two numbers x and y\n    public static long add(long x, long y) {\n",
                        "tests": "    }\n    public static void main(String[] args) {\n    assert(add((0l), (1l)) == (1l));\n    assert(add((5l), (7l)) == (12l));\n    }\n\n}\n",
                        "stop_tokens": ["\n    }\n"]},
                       "        return x + y;\n    }\n", "        return x - y;\n    }\n"),
    # Mono compiles Debug.Assert out (no DEBUG), so here only the right answer is checked.
    "humaneval_csharp": ({"name": "HumanEval_53_add", "language": "cs",
                          "prompt": "using System;\nusing System.Diagnostics;\nclass Problem {\n    // Add two numbers x and y\n    public static long Add(long x, long y) {\n",
                          "tests": "    }\n    public static void Main(string[] args) {\n    Debug.Assert(Add((0L), (1L)) == (1L));\n    Debug.Assert(Add((5L), (7L)) == (12L));\n    }\n\n}\n",
                          "stop_tokens": ["\n    }\n"]},
                         "        return x + y;\n    }\n", None),
}


@pytest.mark.parametrize("dataset", HUMANEVAL_LANGUAGES)
def test_humaneval_in_each_language_of_its_table(endpoint, dataset):
    row, good, bad = HUMANEVAL_LANGUAGES[dataset]
    r = submit(sub(dataset, good, provided_data=row))
    assert r.accepted, (r.full_code, r.tests[0].exec_info)
    if dataset == "humaneval_java":
        assert "class Main" in r.full_code and "class Problem" not in r.full_code
    if bad is not None:
        assert not submit(sub(dataset, bad, provided_data=row)).accepted


def test_multiple_freeform_whole_function(endpoint):
    row = MULTIPLE["multiple_js"][0]
    answer = "Sure:\n```javascript\nfunction add(x, y) {\n  return x + y;\n}\n```\nDone."
    r = submit(sub("multiple_js", answer, provided_data=row, extra={"is_freeform": True}))
    assert r.accepted and r.extracted_code.startswith("function add")
    r = submit(sub("multiple_js", answer.replace("x + y", "x - y"), provided_data=row, extra={"is_freeform": True}))
    assert not r.accepted


# --- CRUXEval -----------------------------------------------------------------------------------

CRUX_ROWS = [{"id": "sample_0", "code": "def f(nums):\n    return [n * 2 for n in nums]", "input": "[1, 2]",
              "output": "[2, 4]"},
             {"id": "sample_1", "code": "def f(s):\n    return s[::-1]", "input": "'abc'", "output": "'cba'"}]


def test_cruxeval_prompts(endpoint):
    both = get_prompts(GetPromptsRequest(dataset="cruxeval", config=TestConfig(provided_data=CRUX_ROWS)))
    assert [p.labels["mode"] for p in both] == ["input", "input", "output", "output"]
    out = get_prompts(GetPromptsRequest(dataset="cruxeval", config=TestConfig(provided_data=CRUX_ROWS,
                                                                              extra={"mode": "output"})))
    assert len(out) == 2 and "assert f([1, 2]) == ??" in out[0].prompt
    phind = get_prompts(GetPromptsRequest(dataset="cruxeval", config=TestConfig(
        provided_data=CRUX_ROWS, extra={"mode": "output", "phind_output": True})))
    assert all("# done" in p.prompt for p in phind)
    one = get_prompt_by_id(GetPromptByIdRequest(dataset="cruxeval", id="sample_1",
                                                config=TestConfig(provided_data=CRUX_ROWS[1])))
    assert one.id == "sample_1" and one.labels == {"mode": "output"} and "return s[::-1]" in one.prompt


def test_cruxeval_grading_both_modes(endpoint):
    row = CRUX_ROWS[0]
    out = ("[ANSWER]\nassert f([1, 2]) == [2, 4]\n[/ANSWER]\n[PYTHON]\ndef f(my_list):\n    return my_list[0]\n"
           "assert f(??) == 1\n[/PYTHON]\n[ANSWER]\nassert f([1, 2, 3]) == 1\n[/ANSWER]")
    r = submit(sub("cruxeval", out, id="sample_0", provided_data=row, extra={"mode": "output"}))
    assert r.accepted and r.extracted_code == "[2, 4]"
    assert not submit(sub("cruxeval", "[ANSWER]\nassert f([1, 2]) == [1, 2]\n[/ANSWER]", id="sample_0",
                          provided_data=row, extra={"mode": "output"})).accepted
    r = submit(sub("cruxeval", "[ANSWER]\nassert f([1, 2]) == [2, 4]\n[/ANSWER]", id="sample_0",
                   provided_data=row, extra={"mode": "input"}))
    assert r.accepted and r.extracted_code == "f([1, 2])"
    assert submit(sub("cruxeval", "[2, 4] # done", id="sample_0", provided_data=row,
                      extra={"mode": "output"})).accepted
    r = post(endpoint, "submit", {"dataset": "cruxeval", "id": "sample_0", "completion": "x",
                                  "config": {"provided_data": row}})
    assert r.status_code == 400 and "code_mode" in r.json()["detail"]


# --- LiveCodeBench ------------------------------------------------------------------------------

def lcb_row(id, io):
    return {"id": id, "content": "### Question:\nSolve it.", "labels": {"platform": "leetcode"},
            "test": json.dumps({"input_output": json.dumps(io)})}


LCB_STDIO = lcb_row(1, {"inputs": ["2\nabc\nxyz\n", "1\nbac\n"], "outputs": ["YES\nNO\n", "YES\n"]})
LCB_CALL = lcb_row(10, {"fn_name": "countSeniors",
                        "inputs": ['["7868190130M7522", "5303914400F9211", "9273338290F4010"]',
                                   '["1313579440F2036", "2921522980M5644"]'],
                        "outputs": ["2", "0"]})


def test_live_code_bench_stdio_and_function_problems(endpoint):
    p = get_prompt_by_id(GetPromptByIdRequest(dataset="live_code_bench_v1", id=1,
                                              config=TestConfig(provided_data=LCB_STDIO)))
    assert p.prompt == "### Question:\nSolve it." and p.labels == {"platform": "leetcode"}
    stdio = ("```python\nif __name__ == '__main__':\n    for _ in range(int(input())):\n        s = input()\n"
             "        print('YES' if s in ['abc', 'bac', 'cba', 'acb'] else 'NO')\n```")
    r = submit(sub("live_code_bench_v1", stdio, id=1, provided_data=LCB_STDIO))
    assert r.accepted and len(r.tests) == 2, [t.exec_info for t in r.tests]
    assert not submit(sub("live_code_bench_v1", stdio.replace("'YES' if", "'NO' if"), id=1,
                          provided_data=LCB_STDIO)).accepted

    call = ("```python\nclass Solution:\n    def countSeniors(self, details):\n        print('debug output')\n"
            "        return len([x for x in details if int(x[11:13]) > 60])\n```")
    r = submit(sub("live_code_bench_v1", call, id=10, provided_data=LCB_CALL))
    assert r.accepted, [t.exec_info.run_result for t in r.tests]
    assert "countSeniors" in r.test_code
    wrong = call.replace("> 60", ">= 0")
    r = submit(sub("live_code_bench_v1", wrong, id=10, provided_data=LCB_CALL))
    assert not r.accepted and len(r.tests) == 1


# --- metrics ------------------------------------------------------------------------------------

def test_get_metrics_pass_at_k(endpoint):
    def result(id, accepted):
        return EvalResult(id=id, accepted=accepted, extracted_code="", tests=[]).dict()
    results = [result("a", True), result("a", True), result("b", False), result("b", True)]
    m = post(endpoint, "get_metrics", {"dataset": "humaneval_python", "config": {}, "results": results}).json()
    assert m == {"pass@1": 0.75}
    results += [result("a", False), result("b", False)]
    m = post(endpoint, "get_metrics", {"dataset": "humaneval_python", "config": {"extra": {"k": [1, 2, 3]}},
                                       "results": results}).json()
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx((1 + 2 / 3) / 2)  # a: 2 of 3 passed, b: 1 of 3
    assert m["pass@3"] == pytest.approx(1.0)
    r = post(endpoint, "get_metrics_function", {"dataset": "humaneval_python", "config": {}})
    assert r.json() == {"function": None}
