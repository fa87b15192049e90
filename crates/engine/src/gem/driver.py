"""A GEM environment in a sandbox: gem-llm behind a UNIX socket, one JSON request per line
(make, reset, step, list) and one JSON answer per line, `{"ok": ...}` or `{"error": ...}`."""

import json
import socket
import sys
import traceback

import gem


def serve(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    conn, _ = server.accept()
    stream = conn.makefile("rwb")
    env = None
    for line in stream:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "make":
                env = gem.make(request["env_id"])
                answer = {}
            elif op == "reset":
                observation, info = env.reset(seed=request.get("seed"))
                answer = {"observation": observation, "info": info}
            elif op == "step":
                observation, reward, terminated, truncated, info = env.step(request["action"])
                answer = {"observation": observation, "reward": float(reward),
                          "terminated": bool(terminated), "truncated": bool(truncated), "info": info}
            elif op == "list":
                answer = {"env_id": sorted(gem.envs.registration.ENV_REGISTRY)}
            else:
                raise ValueError(f"unknown operation {op!r}")
            reply = {"ok": answer}
        except Exception as e:  # the env's own failures go back to the caller
            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()}
        stream.write((json.dumps(reply, default=str) + "\n").encode())
        stream.flush()


serve(sys.argv[1])
