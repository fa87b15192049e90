# cella's Python zygote: a warm interpreter that forks into sandboxes.
#
# Started by the server as `python3 -`, this file on stdin, with a SOCK_SEQPACKET channel on
# fd 3. It imports everything it will ever need now, then never imports again while
# privileged: after a fork, the child joins a sandbox's namespaces (its root is then the
# sandbox's root, whose files the sandbox's user controls), and only the grandchild, after
# dropping to the sandbox's uid with no capabilities, no_new_privs, Landlock and the same
# seccomp filters as every other sandbox process, runs user code.
#
# Per request (JSON, with descriptors): the sandbox init's pidfd, a channel for events, stdin,
# stdout, stderr, for a held request the read end of its "go" pipe, then the cgroup.procs
# files to join. Events are the init's wire format: {"Started": ...}, {"SpawnFailed": ...},
# {"Exited": ...}. A held process is started as far as it can be without its program (in the
# sandbox, every privilege dropped) and waits for a byte on "go" before it runs the program;
# if the pipe closes instead, it exits.

import sys

if sys.path and sys.path[0] == "":
    del sys.path[0]  # never import from the current directory

import atexit  # noqa: E402
import builtins  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import importlib.machinery  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

# Commonly imported at the top of programs: loaded once here instead of in every run.
import bisect, collections, dataclasses, datetime, decimal, fractions, functools, heapq  # noqa: E401,E402,F401
import itertools, math, random, re, string, typing  # noqa: E401,E402,F401

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x20000000, 0x40000000)
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 4, 24, 38, 22, 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_RESTRICT_SELF = 444, 446
LANDLOCK_ACCESS_FS_MAKE_CHAR, LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 6, 1 << 11
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2
CHANNEL = socket.socket(fileno=3)
# Frames of the launcher itself (this file is read from stdin, so "<stdin>"): not the user's.
LAUNCHER_FILES = {runpy.__file__, "<frozen runpy>", "<stdin>"}


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LandlockRuleset(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def send(sock, event):
    sock.send(json.dumps(event).encode())


def landlock(abi):
    """The sandbox's Landlock domain: no device nodes; no signals or abstract sockets across it."""
    if abi < 1:
        return
    attr = LandlockRuleset(LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_BLOCK, 0,
                           (LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else 8
    fd = check(LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock_create_ruleset")
    check(LIBC.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
    os.close(fd)


def drop_privileges(req, filters, landlock_abi):
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # first for the OOM killer, as every sandbox process (sys.rs)
    for cap in range(64):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    uid = req["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears every capability set
    os.chdir(req["cwd"])
    os.umask(0o022)
    for res, soft, hard in req["rlimits"]:
        resource.setrlimit(res, (soft, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    landlock(landlock_abi)
    for prog in filters:
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
    # The uid change made the process undumpable, which execve of an ordinary program would
    # undo: its /proc files (environ, fd, ...) are its own again, as in any other run. Only
    # now, confined like its neighbours: a dumpable process's memory is open to the others
    # of its uid (/proc/<pid>/mem), which must not find one without its filters.
    check(LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")


def user_frames(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename in LAUNCHER_FILES:
        tb = tb.tb_next
    return tb


def run_script(path):
    """What `python3 <path>` does: the file's code in a fresh `__main__` module. (Half the
    page copies and CPU of `runpy.run_path`, which goes through the import machinery.)"""
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def rehearse():
    """Runs a tiny program into a discarded stream, so that the pages every run writes first
    (shared with the zygote until written) are copied while a held process waits, not after
    it is let go: a third fewer page copies on the clock."""
    sink = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    exec(compile("print(1, 'x', file=sink)", "<rehearsal>", "exec", dont_inherit=True), {"sink": sink})
    sink.flush()


def run_user(req):
    """What `python3 <args>` would do, in this already-started interpreter. Never returns."""
    os.environ.clear()
    os.environ.update(kv.split("=", 1) for kv in req["env"])
    # As a fresh interpreter puts them: PYTHONPATH's directories before the standard ones.
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    refresh_preloaded()
    # The standard streams as CPython sets them up for these descriptors.
    def stream(fd, mode, **kw):
        return io.TextIOWrapper(io.open(fd, mode + "b", closefd=False), encoding="utf-8", **kw)

    sys.stdin = sys.__stdin__ = stream(0, "r")
    sys.stdout = sys.__stdout__ = stream(1, "w", line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = stream(2, "w", errors="backslashreplace", line_buffering=True)
    args = req["argv"][1:]
    code = 0
    try:
        if args[:1] == ["-m"]:
            sys.argv = args[1:]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            script = os.path.abspath(args[0])  # __file__ of __main__ is absolute since 3.9
            sys.path.insert(0, os.path.dirname(script))
            run_script(script)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 - reported as Python would
        traceback.print_exception(type(e), e, user_frames(e.__traceback__))
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        code = code or 120
    os._exit(code)


def cpu_micros(usage):
    return int((usage.ru_utime + usage.ru_stime) * 1e6)


def close_all_but(*keep):
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def over_pids_limit():
    """Whether the sandbox holds more processes than its pids.max, read where the sandbox
    shows its own cgroups (v1's pids hierarchy, or the v2 one). A process that moves into a
    cgroup is not held to pids.max, as a fork in it is: one that moved in checks."""
    for pids in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        try:
            with open(pids + "/pids.current") as current, open(pids + "/pids.max") as most:
                current, most = current.read().strip(), most.read().strip()
        except OSError:
            continue
        return most != "max" and int(current) > int(most)
    return False


def grandchild(req, report, stdio, go, procs, filters, landlock_abi):
    try:
        for fd in procs:
            os.write(fd, b"0")
        if over_pids_limit():  # forked in the zygote, outside the sandbox
            raise OSError(errno.EAGAIN, "fork: " + os.strerror(errno.EAGAIN))
        os.setsid()
        # The zygote ignores the signals meant for the server's process group (sys.rs,
        # SERVER_GROUP_SIGNALS); a program has them as a fresh interpreter does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        drop_privileges(req, filters, landlock_abi)
        close_all_but(report, *go)
        if go:
            rehearse()
        # The CPU spent on getting here is the sandbox's, not the program's: the parent
        # takes it off what it reports.
        setup = resource.getrusage(resource.RUSAGE_SELF)
        os.write(report, b"P%d %d" % (os.getpid(), cpu_micros(setup)))
        os.close(report)
    except BaseException as e:  # noqa: BLE001
        os.write(report, b"E" + str(e).encode())
        os._exit(127)
    for fd in go:
        if not os.read(fd, 1):
            os._exit(0)  # let go of without running
        os.close(fd)
    run_user(req)


def child(req, fds, filters, landlock_abi):
    """Joins the sandbox, forks the process that runs the code, and reports on it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    CHANNEL.close()
    pidfd, events_fd, *rest = fds
    stdio, rest = rest[:3], rest[3:]
    held = 1 if req["held"] else 0
    go, procs = rest[:held], rest[held:]  # go: the held request's pipe, if any
    events = socket.socket(fileno=events_fd)
    exec_id = req["id"]
    # One call joins every namespace of the init; the mount namespace also moves our root.
    flags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    if LIBC.setns(pidfd, flags) != 0:
        err = ctypes.get_errno()
        send(events, {"SpawnFailed": {"id": exec_id, "error": f"setns: {os.strerror(err)}", "missing_program": False}})
        os._exit(1)
    os.close(pidfd)
    read_end, report = os.pipe()
    pid = os.fork()  # the first process in the sandbox's pid namespace from here
    if pid == 0:
        os.close(read_end)
        events.close()
        try:
            grandchild(req, report, stdio, go, procs, filters, landlock_abi)
        except BaseException:  # noqa: BLE001 - a bug here must still say something
            os.write(2, traceback.format_exc().encode())
            os._exit(1)
    os.close(report)
    for fd in (*stdio, *go, *procs):
        os.close(fd)
    message = b""
    while chunk := os.read(read_end, 4096):
        message += chunk
    if not message.startswith(b"P"):
        os.waitpid(pid, 0)
        error = message[1:].decode(errors="replace") or "the process died while starting"
        send(events, {"SpawnFailed": {"id": exec_id, "error": error, "missing_program": False}})
        os._exit(0)
    sandbox_pid, setup_us = map(int, message[1:].split())  # its pid as the sandbox sees it
    send(events, {"Started": {"id": exec_id, "pid": sandbox_pid}})
    forward_signals(events, pid)
    _, status, usage = os.wait4(pid, 0)
    cpu_us = max(0, cpu_micros(usage) - setup_us)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    send(events, {"Exited": {"id": exec_id, "code": code, "signal": sig, "cpu_us": cpu_us}})
    os._exit(0)


def forward_signals(events, pid):
    """Until the process exits, sends it the signals the server asks for on the events channel
    (the server cannot: the process is outside the init's Landlock domain). Its parent, not yet
    having reaped it, is the one process that can name it without racing pid reuse."""
    exited = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(exited, select.POLLIN)
    poller.register(events, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if exited in ready:
            break
        try:
            message = events.recv(4096)
        except OSError:
            message = b""
        if not message:  # the server is gone: nothing more to forward
            poller.unregister(events)
            continue
        try:
            os.kill(pid, int(json.loads(message)["Signal"]["signal"]))
        except (ValueError, KeyError, TypeError, OSError):
            pass
    os.close(exited)


def preload(modules):
    """Imports modules that programs use, once for every run that forks from here."""
    if not modules:
        return
    # A zygote must stay single-threaded to fork: no BLAS thread pools.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            pass


def exit_if_the_server_goes():
    """Preloading takes seconds on a cold cache or a slow machine. If the server goes
    meanwhile, nothing can come any more: a thread watching the channel ends the zygote at
    once, rather than after it. Returns what stops the watch (a zygote that forks must be
    single-threaded)."""
    done_r, done_w = os.pipe()
    poller = select.poll()
    poller.register(CHANNEL, select.POLLRDHUP)  # the peer's close; POLLHUP comes unasked
    poller.register(done_r, select.POLLIN)

    def watch():
        while True:
            for fd, _ in poller.poll():
                if fd == done_r:
                    return
                os._exit(0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def stop():
        os.write(done_w, b".")
        watcher.join()
        os.close(done_r)
        os.close(done_w)

    return stop


def refresh_preloaded():
    """Preloaded modules keep state from the zygote; give each run what a new process has:
    its own random state, and matplotlib's config and cache directories found afresh (under
    the sandbox's home, with its environment), not the zygote's private ones."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    mpl = sys.modules.get("matplotlib")
    if mpl is not None:
        try:
            mpl.get_configdir = mpl._logged_cached("CONFIGDIR=%s")(mpl.get_configdir.__wrapped__)
            mpl.get_cachedir = mpl._logged_cached("CACHEDIR=%s")(mpl.get_cachedir.__wrapped__)
        except AttributeError:  # another matplotlib: keep the zygote's directories
            pass


def main():
    config = json.loads(CHANNEL.recv(1 << 20))
    filters = [bytes.fromhex(f) for f in config["filters"]]
    landlock_abi = config["landlock_abi"]
    os.environ.update(config["env"])
    stop_watching = exit_if_the_server_goes()
    preload(config["preload"])
    stop_watching()
    # Forks share the zygote's pages: keep their collectors from walking (and so copying) the
    # objects that exist now.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    CHANNEL.send(b'"Ready"')
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(CHANNEL, 1 << 20, 16)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)  # the server is gone
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            try:
                child(json.loads(data), fds, filters, landlock_abi)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)


main()
