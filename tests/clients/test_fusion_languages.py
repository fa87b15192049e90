"""Every available language through the real `sandbox-fusion` client: hello world, stdin, a
compile (or syntax) error, a runtime error and a timeout."""

import time

import pytest
from sandbox_fusion import RunCodeRequest, run_code

# Per language: programs for each case. `echo` reverses one word read from stdin. A missing
# case is one the language cannot express usefully (e.g. stdin for a test runner).
PROGRAMS = {
    "python": dict(hello="print('hello')", echo="print(input()[::-1])", syntax="print('x'",
                   crash="raise SystemExit(3)", loop="while True: pass"),
    "pytest": dict(hello="def test_ok():\n    print('hello')\n    assert True\n", syntax="def test_x(:\n  pass",
                   crash="def test_fail():\n    assert 1 == 2\n", loop="def test_loop():\n    while True: pass\n"),
    "cpp": dict(hello='#include <iostream>\nint main(){std::cout<<"hello"<<std::endl;}',
                echo='#include <iostream>\n#include <string>\n#include <algorithm>\nint main(){std::string s;std::cin>>s;'
                     'std::reverse(s.begin(),s.end());std::cout<<s<<std::endl;}',
                syntax="int main( { return 0 }", crash="#include <cstdlib>\nint main(){ return 3; }",
                loop="int main(){ volatile int x=0; while(1){x++;} }"),
    "gtest": dict(hello='#include <gtest/gtest.h>\n#include <iostream>\nTEST(A, B){ std::cout << "hello" << std::endl; EXPECT_EQ(1, 1); }',
                  syntax="#include <gtest/gtest.h>\nTEST(A, B { }",
                  crash="#include <gtest/gtest.h>\nTEST(A, B){ EXPECT_EQ(1, 2); }",
                  loop="#include <gtest/gtest.h>\nTEST(A, B){ volatile int x = 0; while (1) { x++; } }"),
    "go": dict(hello='package main\nimport "fmt"\nfunc main(){ fmt.Println("hello") }',
               echo='package main\nimport ("bufio";"fmt";"os")\nfunc main(){ r:=bufio.NewReader(os.Stdin); var s string; '
                    'fmt.Fscan(r,&s); b:=[]rune(s); for i,j:=0,len(b)-1;i<j;i,j=i+1,j-1{b[i],b[j]=b[j],b[i]}; fmt.Println(string(b)) }',
               syntax="package main\nfunc main( {}", crash='package main\nfunc main(){ panic("boom") }',
               loop="package main\nfunc main(){ for {} }"),
    "go_test": dict(hello='package main\nimport ("testing";"fmt")\nfunc TestHello(t *testing.T){ fmt.Println("hello") }',
                    syntax='package main\nimport "testing"\nfunc TestX(t *testing.T { }',
                    crash='package main\nimport "testing"\nfunc TestFail(t *testing.T){ t.Fatal("no") }',
                    loop='package main\nimport "testing"\nfunc TestLoop(t *testing.T){ for {} }'),
    "java": dict(hello='import org.javatuples.Pair;\npublic class Main { public static void main(String[] a){ '
                       'System.out.println(Pair.with("hel", "lo").getValue0() + "lo"); } }',
                 echo='import java.util.*;\npublic class Main { public static void main(String[] a){ Scanner s=new Scanner(System.in); '
                      'System.out.println(new StringBuilder(s.next()).reverse()); } }',
                 syntax="public class Main { public static void main(String[] a) { }",
                 crash='public class Main { public static void main(String[] a){ throw new RuntimeException("boom"); } }',
                 loop="public class Main { public static void main(String[] a){ while(true){} } }"),
    "junit": dict(hello='import org.junit.jupiter.api.Test;\nimport static org.junit.jupiter.api.Assertions.*;\n'
                        'public class HelloTest { @Test void t(){ System.out.println("hello"); assertEquals(1, 1); } }',
                  syntax="public class HelloTest { void t( }",
                  crash='import org.junit.jupiter.api.Test;\nimport static org.junit.jupiter.api.Assertions.*;\n'
                        'public class HelloTest { @Test void t(){ assertEquals(1, 2); } }',
                  loop='import org.junit.jupiter.api.Test;\npublic class HelloTest { @Test void t(){ while (true) {} } }'),
    "nodejs": dict(hello="const _ = require('lodash'); console.log(_.join(['hel', 'lo'], ''))",
                   echo="const s=require('fs').readFileSync(0,'utf8').trim(); console.log(s.split('').reverse().join(''))",
                   syntax="console.log(", crash="throw new Error('boom')", loop="while(true){}"),
    "typescript": dict(hello="const x: string = 'hello'; console.log(x)",
                       echo="import * as fs from 'fs'; const s: string = fs.readFileSync(0,'utf8').trim(); "
                            "console.log(s.split('').reverse().join(''))",
                       syntax="const x: = 1", crash="throw new Error('boom')", loop="while(true){}"),
    "jest": dict(hello="test('t', () => { console.log('hello'); expect(1 + 1).toBe(2); });",
                 syntax="test('t', () => {", crash="test('t', () => { expect(1).toBe(2); });",
                 loop="test('t', () => { while (true) {} });"),
    "react": dict(hello="import { useState } from 'react';\n"
                        "import { render, screen, fireEvent } from '@testing-library/react';\n"
                        "function Counter() { const [n, setN] = useState(0);\n"
                        "  return <button onClick={() => setN(n + 1)}>count {n}</button>; }\n"
                        "test('clicks', () => { render(<Counter />); fireEvent.click(screen.getByRole('button'));\n"
                        "  expect(screen.getByRole('button')).toHaveTextContent('count 1'); console.log('hello'); });",
                  syntax="test('t', () => { <div> });",
                  crash="import { render, screen } from '@testing-library/react';\n"
                        "test('t', () => { render(<p>hi</p>); expect(screen.getByText('hi')).not.toBeInTheDocument(); });",
                  loop="test('t', () => { while (true) {} });"),
    "php": dict(hello='<?php echo "hello\\n";', echo='<?php $s = trim(fgets(STDIN)); echo strrev($s), "\\n";',
                syntax='<?php echo "x"', crash='<?php throw new Exception("boom");', loop="<?php while(true){}"),
    "csharp": dict(hello='using System; class P { static void Main(){ Console.WriteLine("hello"); } }',
                   echo='using System; class P { static void Main(){ var a=Console.ReadLine().Trim().ToCharArray(); '
                        'Array.Reverse(a); Console.WriteLine(new string(a)); } }',
                   syntax="class P { static void Main( }",
                   crash='class P { static void Main(){ throw new System.Exception("boom"); } }',
                   loop="class P { static void Main(){ while(true){} } }"),
    "bash": dict(hello="echo hello", echo='read s; for ((i=${#s}-1; i>=0; i--)); do printf %s "${s:$i:1}"; done; echo',
                 syntax="if [", crash="exit 3", loop="while :; do :; done"),
    "rust": dict(hello='fn main(){ println!("hello"); }',
                 echo="use std::io::Read; fn main(){ let mut s=String::new(); std::io::stdin().read_to_string(&mut s).unwrap(); "
                      'println!("{}", s.trim().chars().rev().collect::<String>()); }',
                 syntax="fn main( {}", crash='fn main(){ panic!("boom"); }', loop="fn main(){ loop {} }"),
    "lua": dict(hello='print("hello")', echo='print(string.reverse(io.read("l")))', syntax="print(",
                crash='error("boom")', loop="while true do end"),
    "R": dict(hello='cat("hello\\n")',
              echo='s <- readLines(file("stdin"), n=1); cat(paste(rev(strsplit(s, "")[[1]]), collapse=""), "\\n", sep="")',
              syntax="cat(", crash='stop("boom")', loop="while (TRUE) {}"),
    "perl": dict(hello='print "hello\\n";', echo='my $s = <STDIN>; chomp $s; print scalar reverse($s), "\\n";',
                 syntax='print "x', crash='die "boom";', loop="while (1) {}"),
    "ruby": dict(hello='puts "hello"', echo="puts gets.strip.reverse", syntax="puts(", crash='raise "boom"', loop="loop {}"),
    "scala": dict(hello='object Main extends App { println("hello") }',
                  echo="object Main extends App { println(scala.io.StdIn.readLine().trim.reverse) }",
                  syntax="object Main extends App { println( }",
                  crash='object Main extends App { throw new RuntimeException("boom") }',
                  loop="object Main extends App { while (true) {} }"),
    "kotlin_script": dict(hello='println("hello")', echo="println(readLine()!!.trim().reversed())", syntax="println(",
                          crash='throw RuntimeException("boom")', loop="while (true) {}"),
    "racket": dict(hello='#lang racket\n(displayln "hello")',
                   echo="#lang racket\n(displayln (list->string (reverse (string->list (read-line)))))",
                   syntax='#lang racket\n(displayln "x"', crash='#lang racket\n(error "boom")',
                   loop="#lang racket\n(let loop () (loop))"),
    "D_ut": dict(hello='import std.stdio; void main(){ writeln("hello"); }',
                 echo="import std.stdio, std.string, std.range, std.conv; void main(){ writeln(readln().strip.retro.to!string); }",
                 syntax="void main( {}", crash="unittest { assert(1 == 2); } void main(){}",
                 loop="void main(){ while(true){} }"),
    "verilog": dict(hello='module tb; initial begin $display("hello"); $finish; end endmodule',
                    syntax='module tb; initial begin $display("x") end endmodule',
                    loop="module tb; reg clk = 0; always #1 clk = ~clk; endmodule"),
    "sql": dict(hello="SELECT 'hello';", syntax="SELEC 1;", crash="SELECT * FROM no_such_table;",
                loop="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c;"),
}

# Toolchains that start a JVM (or build a lot) get longer compile and run budgets.
SLOW = {"java", "junit", "scala", "kotlin_script", "csharp", "go", "go_test", "rust", "D_ut", "jest", "react", "gtest", "R", "racket"}
# What a passing "hello" prints where a test runner captures the program's own output.
HELLO = {"pytest": "1 passed", "go_test": "ok"}
# Test runners that report on stderr; every other hello world leaves it empty (no toolchain noise).
REPORT_ON_STDERR = {"jest", "react"}
COMPILED = {"cpp", "gtest", "go", "java", "junit", "csharp", "rust", "scala", "D_ut", "verilog"}


def cases():
    for lang, progs in PROGRAMS.items():
        for case in progs:
            yield pytest.param(lang, case, id=f"{lang}-{case}")


def run(lang, code, **kw):
    slow = lang in SLOW
    kw.setdefault("compile_timeout", 60 if slow else 20)
    kw.setdefault("run_timeout", 30 if slow else 10)
    r = run_code(RunCodeRequest(code=code, language=lang, **kw), max_attempts=1)
    # Output is read by programs: no toolchain colours it with terminal escapes.
    for result in (r.compile_result, r.run_result):
        assert result is None or "\x1b[" not in (result.stdout or "") + (result.stderr or ""), r
    return r


@pytest.mark.parametrize("lang,case", list(cases()))
def test_language(endpoint, lang, case):
    code = PROGRAMS[lang][case]
    if case == "hello":
        r = run(lang, code)
        out = r.run_result.stdout + r.run_result.stderr
        assert r.status == "Success", r
        assert HELLO.get(lang, "hello") in out, r
        assert r.run_result.return_code == 0
        assert (r.compile_result is not None) == (lang in COMPILED), r
        if lang not in REPORT_ON_STDERR:
            assert r.run_result.stderr == "", r
    elif case == "echo":
        r = run(lang, code, stdin="stressed\n")
        assert r.status == "Success", r
        assert r.run_result.stdout.strip() == "desserts", r
    elif case == "syntax":
        r = run(lang, code)
        assert r.status == "Failed", r
        if lang in COMPILED:
            assert r.compile_result.return_code != 0, r
            assert r.run_result is None, r
        else:
            assert r.run_result.return_code != 0, r
    elif case == "crash":
        r = run(lang, code)
        assert r.status == "Failed", r
        assert r.run_result.status == "Finished", r
        assert r.run_result.return_code != 0, r
    elif case == "loop":
        started = time.time()
        r = run(lang, code, run_timeout=3 if lang in SLOW else 1)
        assert r.status == "Failed", r
        assert r.run_result.status == "TimeLimitExceeded", r
        assert r.run_result.return_code is None
        assert time.time() - started < 60


@pytest.mark.parametrize("lang", ["julia", "swift", "lean", "cuda", "python_gpu", "python2"])
def test_unavailable_language_fails_fast_without_retries(endpoint, lang):
    started = time.time()
    # The client's default of 5 attempts would take ~15 s if the answer were retried.
    r = run_code(RunCodeRequest(code="x", language=lang))
    assert time.time() - started < 2
    assert r.status == "Failed"
    assert "unavailable" in r.message
    assert r.run_result.return_code == 127
