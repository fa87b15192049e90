// cella's JavaScript kernel: a Jupyter kernel on Node.js, for `javascript` contexts.
//
// It speaks the Jupyter messaging protocol (5.3) over ZeroMQ's ZMTP 3.0 on UNIX sockets (the
// `ipc` transport), so any Jupyter client can drive it, the server's own included. Code runs
// in this process's global context, as `node -e` runs it: declarations persist from one
// execution to the next, `console.log` is stdout, the value of the last expression is the
// result, a throw is an `error` with its name, message and stack, and top-level `await`
// works (the code is rewritten into an async function whose declarations stay global, as
// Node's own REPL does). SIGINT interrupts: a busy loop through `breakOnSigint`, an awaited
// promise by abandoning it.
//
// Usage: node javascript.js <connection file>

"use strict";

const crypto = require("crypto");
const fs = require("fs");
const net = require("net");
const path = require("path");
const util = require("util");
const vm = require("vm");
const Module = require("module");

const connection = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const KEY = connection.key || "";
const DELIM = Buffer.from("<IDS|MSG>");
const SESSION = crypto.randomUUID();
const STREAM_FLUSH_BYTES = 64 << 10;
// Past this much unsent on a subscriber's socket, stream output is dropped: a program
// printing in a loop must not grow this process without bound while the server reads.
const IOPUB_BACKLOG_BYTES = 16 << 20;
// Stack frames of this file and of Node itself are not the code's.
const isInternalFrame = (line) => line.includes(__filename) || /\(node:|at node:/.test(line);

// ---- ZMTP 3.0, NULL mechanism, server side ---------------------------------------------

function greeting() {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 0;
  g.write("NULL", 12);
  return g;
}

function frame(body, flags) {
  const long = body.length > 255;
  const head = Buffer.alloc(long ? 9 : 2);
  head[0] = flags | (long ? 0x02 : 0);
  if (long) head.writeBigUInt64BE(BigInt(body.length), 1);
  else head[1] = body.length;
  return Buffer.concat([head, body]);
}

function ready(type) {
  const name = Buffer.from("Socket-Type");
  const value = Buffer.from(type);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(value.length);
  return frame(Buffer.concat([Buffer.from("\x05READY"), Buffer.from([name.length]), name, len, value]), 0x04);
}

function encode(frames) {
  return Buffer.concat(frames.map((f, i) => frame(f, i + 1 < frames.length ? 0x01 : 0)));
}

// One peer connection: parses frames into messages and hands each to `onMessage`.
class Peer {
  constructor(socket, type, onMessage) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.greeted = false;
    this.readied = false;
    this.parts = [];
    this.subscribed = false;
    socket.write(greeting());
    socket.write(ready(type));
    socket.on("data", (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      try {
        this.parse(onMessage);
      } catch (e) {
        socket.destroy();
      }
    });
    socket.on("error", () => {});
  }

  parse(onMessage) {
    if (!this.greeted) {
      if (this.buf.length < 64) return;
      if (this.buf[0] !== 0xff || (this.buf[9] & 1) !== 1) throw new Error("not ZMTP");
      this.buf = this.buf.subarray(64);
      this.greeted = true;
    }
    for (;;) {
      if (this.buf.length < 2) return;
      const flags = this.buf[0];
      const long = flags & 0x02;
      if (long && this.buf.length < 9) return;
      const size = long ? Number(this.buf.readBigUInt64BE(1)) : this.buf[1];
      const start = long ? 9 : 2;
      if (this.buf.length < start + size) return;
      const body = this.buf.subarray(start, start + size);
      this.buf = this.buf.subarray(start + size);
      if (flags & 0x04) {
        if (body.subarray(1, 6).toString() === "READY") this.readied = true;
        else if (body.subarray(1, 10).toString() === "SUBSCRIBE") this.subscribed = true;
        continue;
      }
      this.parts.push(Buffer.from(body));
      if (!(flags & 0x01)) {
        const parts = this.parts;
        this.parts = [];
        onMessage(this, parts);
      }
    }
  }

  send(frames) {
    if (!this.socket.destroyed) this.socket.write(encode(frames));
  }
}

function listen(port, type, onMessage) {
  const file = `${connection.ip}-${port}`;
  try {
    fs.unlinkSync(file);
  } catch (e) {}
  const peers = new Set();
  const server = net.createServer((socket) => {
    const peer = new Peer(socket, type, onMessage);
    peers.add(peer);
    socket.on("close", () => peers.delete(peer));
  });
  server.listen(file);
  return peers;
}

// ---- Jupyter messages -------------------------------------------------------------------

function sign(parts) {
  if (!KEY) return "";
  const hmac = crypto.createHmac("sha256", KEY);
  for (const p of parts) hmac.update(p);
  return hmac.digest("hex");
}

function decode(frames) {
  const at = frames.findIndex((f) => f.equals(DELIM));
  if (at < 0 || frames.length < at + 6) return null;
  const [signature, ...parts] = frames.slice(at + 1, at + 6);
  if (KEY) {
    const expected = Buffer.from(sign(parts));
    if (signature.length !== expected.length || !crypto.timingSafeEqual(signature, expected)) return null;
  }
  const [header, parent_header, metadata, content] = parts.map((p) => JSON.parse(p.toString()));
  return { idents: frames.slice(0, at), header, parent_header, metadata, content };
}

function message(type, parent, content) {
  const header = {
    msg_id: crypto.randomUUID(),
    session: SESSION,
    username: "kernel",
    date: new Date().toISOString(),
    msg_type: type,
    version: "5.3",
  };
  const parts = [header, parent ? parent.header : {}, {}, content].map((p) => Buffer.from(JSON.stringify(p)));
  return [DELIM, Buffer.from(sign(parts)), ...parts];
}

const subscribers = listen(connection.iopub_port, "PUB", (peer, parts) => {
  // ZMTP 3.0 subscriptions travel as messages: a first byte of 1 subscribes.
  if (parts.length === 1 && parts[0][0] === 1) peer.subscribed = true;
});

function publish(type, parent, content) {
  const frames = [Buffer.from(`kernel.${SESSION}.${type}`), ...message(type, parent, content)];
  const bytes = encode(frames);
  for (const peer of subscribers) {
    if (!peer.subscribed || peer.socket.destroyed) continue;
    if (type === "stream" && peer.socket.writableLength > IOPUB_BACKLOG_BYTES) continue;
    peer.socket.write(bytes);
  }
}

function reply(peer, request, type, content) {
  peer.send([...request.idents, ...message(type, request, content)]);
}

// ---- Output -------------------------------------------------------------------------------

let current = null; // the request whose output is being produced
const pending = { stdout: "", stderr: "" };

function flush() {
  for (const name of ["stdout", "stderr"]) {
    if (pending[name]) {
      publish("stream", current, { name, text: pending[name] });
      pending[name] = "";
    }
  }
}

let flushQueued = false;
for (const name of ["stdout", "stderr"]) {
  process[name].write = (chunk, encoding, callback) => {
    pending[name] += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString(typeof encoding === "string" ? encoding : "utf8");
    if (pending[name].length >= STREAM_FLUSH_BYTES) flush();
    else if (!flushQueued) {
      flushQueued = true;
      setImmediate(() => {
        flushQueued = false;
        flush();
      });
    }
    if (typeof encoding === "function") encoding();
    else if (typeof callback === "function") callback();
    return true;
  };
}

function errorContent(e) {
  const isError = e instanceof Error || (e && typeof e === "object" && "stack" in e && "message" in e);
  const ename = isError ? e.name || (e.constructor && e.constructor.name) || "Error" : "Error";
  const evalue = isError ? String(e.message) : util.inspect(e);
  const stack = isError && typeof e.stack === "string" ? e.stack.split("\n") : [`Uncaught ${evalue}`];
  const traceback = stack.filter((line) => !isInternalFrame(line));
  return { ename, evalue, traceback };
}

function reportAsync(e) {
  flush();
  publish("error", current, errorContent(e));
}

process.on("uncaughtException", reportAsync);
process.on("unhandledRejection", reportAsync);

// ---- Evaluation --------------------------------------------------------------------------

globalThis.require = Module.createRequire(path.join(process.cwd(), "[cell]"));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;

let interruptAwait = null;
process.on("SIGINT", () => {
  if (interruptAwait) interruptAwait(new Error("Script execution interrupted."));
});

// Top-level `await`: the code becomes an async function whose top-level declarations are
// hoisted out as global `let`s (functions and classes as assignments), its last expression
// the function's result, as Node's REPL rewrites it.
function rewriteAwait(code) {
  let acorn;
  try {
    acorn = require("acorn");
  } catch (e) {
    return null;
  }
  let ast;
  try {
    ast = acorn.parse(code, { ecmaVersion: "latest", sourceType: "script", allowAwaitOutsideFunction: true });
  } catch (e) {
    return null;
  }
  const names = [];
  const edits = []; // [start, end, text], applied back to front
  const collect = (pattern) => {
    switch (pattern.type) {
      case "Identifier": names.push(pattern.name); break;
      case "ObjectPattern": pattern.properties.forEach((p) => collect(p.type === "RestElement" ? p.argument : p.value)); break;
      case "ArrayPattern": pattern.elements.forEach((el) => el && collect(el)); break;
      case "RestElement": collect(pattern.argument); break;
      case "AssignmentPattern": collect(pattern.left); break;
    }
  };
  ast.body.forEach((node, i) => {
    if (node.type === "VariableDeclaration") {
      node.declarations.forEach((d) => collect(d.id));
      const assigns = node.declarations
        .filter((d) => d.init)
        .map((d) => `(${code.slice(d.id.start, d.id.end)} = ${code.slice(d.init.start, d.init.end)})`);
      edits.push([node.start, node.end, assigns.length ? `void (${assigns.join(", ")});` : ";"]);
    } else if (node.type === "FunctionDeclaration" || node.type === "ClassDeclaration") {
      names.push(node.id.name);
      edits.push([node.start, node.start, `${node.id.name} = `]);
      edits.push([node.end, node.end, ";"]);
    } else if (i === ast.body.length - 1 && node.type === "ExpressionStatement") {
      edits.push([node.start, node.expression.start, "return ("]);
      edits.push([node.expression.end, node.end, ");"]);
    }
  });
  let body = code;
  for (const [start, end, text] of edits.sort((a, b) => b[0] - a[0] || b[1] - a[1])) {
    body = body.slice(0, start) + text + body.slice(end);
  }
  const declared = names.filter((n) => !(n in globalThis));
  return {
    declarations: declared.length ? `let ${declared.join(", ")};` : "",
    body: `(async () => {\n${body}\n})()`,
  };
}

function compile(source, filename) {
  return new vm.Script(source, { filename });
}

async function evaluate(code, filename) {
  let script;
  try {
    script = compile(code, filename);
  } catch (e) {
    const rewritten = e instanceof SyntaxError && code.includes("await") ? rewriteAwait(code) : null;
    if (!rewritten) throw e;
    if (rewritten.declarations) compile(rewritten.declarations, filename).runInThisContext();
    const promise = compile(rewritten.body, filename).runInThisContext({ breakOnSigint: true });
    return await new Promise((resolve, reject) => {
      interruptAwait = reject;
      promise.then(resolve, reject);
    }).finally(() => {
      interruptAwait = null;
    });
  }
  return script.runInThisContext({ breakOnSigint: true, displayErrors: false });
}

let executionCount = 0;
const queue = [];
let running = false;

async function execute(peer, request) {
  const { code = "", silent = false, store_history = true } = request.content;
  if (!silent && store_history) executionCount += 1;
  current = request;
  publish("status", request, { execution_state: "busy" });
  publish("execute_input", request, { code, execution_count: executionCount });
  let status = "ok";
  let error = null;
  try {
    const value = await evaluate(code, `<cell ${executionCount}>`);
    flush();
    if (value !== undefined && !silent) {
      publish("execute_result", request, {
        execution_count: executionCount,
        data: { "text/plain": util.inspect(value, { colors: false }) },
        metadata: {},
      });
    }
  } catch (e) {
    flush();
    status = "error";
    error = errorContent(e);
    publish("error", request, error);
  }
  // What the code printed through callbacks that ran before it finished is out already.
  await new Promise((resolve) => setImmediate(resolve));
  flush();
  const content = status === "ok"
    ? { status, execution_count: executionCount, user_expressions: {}, payload: [] }
    : { status, execution_count: executionCount, ...error };
  reply(peer, request, "execute_reply", content);
  publish("status", request, { execution_state: "idle" });
}

async function drainQueue() {
  if (running) return;
  running = true;
  while (queue.length) {
    const [peer, request] = queue.shift();
    await execute(peer, request);
  }
  running = false;
}

const LANGUAGE_INFO = {
  name: "javascript",
  version: process.versions.node,
  mimetype: "application/javascript",
  file_extension: ".js",
};

function handle(peer, frames) {
  const request = decode(frames);
  if (!request) return;
  const type = request.header.msg_type;
  const answer = (replyType, content) => {
    publish("status", request, { execution_state: "busy" });
    reply(peer, request, replyType, content);
    publish("status", request, { execution_state: "idle" });
  };
  switch (type) {
    case "execute_request":
      queue.push([peer, request]);
      drainQueue();
      break;
    case "kernel_info_request":
      answer("kernel_info_reply", {
        status: "ok",
        protocol_version: "5.3",
        implementation: "cella-javascript",
        implementation_version: "1",
        language_info: LANGUAGE_INFO,
        banner: `Node.js ${process.version}`,
      });
      break;
    case "is_complete_request":
      answer("is_complete_reply", { status: "unknown" });
      break;
    case "complete_request":
      answer("complete_reply", { status: "ok", matches: [], cursor_start: request.content.cursor_pos || 0, cursor_end: request.content.cursor_pos || 0, metadata: {} });
      break;
    case "inspect_request":
      answer("inspect_reply", { status: "ok", found: false, data: {}, metadata: {} });
      break;
    case "comm_info_request":
      answer("comm_info_reply", { status: "ok", comms: {} });
      break;
    case "history_request":
      answer("history_reply", { status: "ok", history: [] });
      break;
    case "interrupt_request":
      answer("interrupt_reply", { status: "ok" });
      process.emit("SIGINT");
      break;
    case "shutdown_request":
      answer("shutdown_reply", { status: "ok", restart: !!request.content.restart });
      setImmediate(() => process.exit(0));
      break;
    default:
      break;
  }
}

listen(connection.shell_port, "ROUTER", handle);
listen(connection.control_port, "ROUTER", handle);
// Heartbeat: a REP socket echoing every message back.
listen(connection.hb_port, "REP", (peer, parts) => peer.send(parts));
publish("status", null, { execution_state: "starting" });
