// Run a MicroPython program on the official WebAssembly port under Node.
//
// Usage:
//   node run.mjs [--heap-size BYTES] [--path SRC[:DEST]]... [--name NAME] [SCRIPT|-] [ARG...]
//
// Theory of operation
// -------------------
// The npm package @micropython/micropython-webassembly-pyscript is the
// MicroPython "webassembly" port compiled with Emscripten.  loadMicroPython()
// returns an object whose runPython()/runPythonAsync() execute source text in
// the VM's __main__ module and whose FS is the Emscripten in-memory file
// system the VM imports from.  Its sys.path is ['', '.frozen', '/lib'] and
// its cwd is '/', so files copied to '/' or '/lib' are importable.
//
// 1. Each --path SRC[:DEST] is copied from the host into the VM file system
//    before the program starts.  DEST defaults to /lib/<basename of SRC>, so
//    `--path site-packages/umsgpack` makes `import umsgpack` work and
//    `--path firmware` makes `import firmware.x` work.  Directories are copied
//    recursively (all regular files; __pycache__ and dot-files are skipped) and
//    merged into DEST, so `--path some/dir:/lib` puts its modules at top level.
// 2. The program (SCRIPT, or stdin when SCRIPT is '-' or absent) runs with
//    runPythonAsync(), which compiles it as the __main__ module and also
//    allows top-level `await`.  That matters because in this variant asyncio
//    runs on the JavaScript event loop and has no asyncio.run(): async code
//    must `await main()` at top level instead.
// 3. stdout and stderr of the VM are collected byte by byte and written to
//    the process's fds with fs.writeSync, so nothing is lost on exit.
// 4. An uncaught exception surfaces in JS as a PythonError whose message is
//    the MicroPython traceback; it is printed to stderr (with the '<stdin>'
//    file name the port uses replaced by NAME) and the exit status is 1.
//    SystemExit follows CPython: an int argument is the exit status, None or
//    no argument is 0, anything else is printed and gives 1.
// 5. The process exits explicitly once the program finishes, so a
//    forgotten background asyncio task cannot keep Node alive.
//
// Exit status 2 means the runner itself was misused (bad arguments, missing
// files); it is never produced by the MicroPython program unless it calls
// sys.exit(2).
//
// The heap size is the *initial* GC heap: this variant grows its heap on
// demand, so it cannot be used to emulate a small board's RAM limit.

import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const USAGE =
  "usage: node run.mjs [--heap-size BYTES] [--path SRC[:DEST]]... [--name NAME] [SCRIPT|-] [ARG...]";
const DEFAULT_HEAP_SIZE = 1024 * 1024;
const SKIPPED_NAMES = new Set(["__pycache__", "node_modules"]);

class UsageError extends Error {}

/**
 * Parse the command line.
 * @param {string[]} argv arguments after the script name
 * @returns {{heapSize: number, mounts: {src: string, dest: string}[], name: string | null,
 *            script: string, args: string[]}}
 */
function parseArgs(argv) {
  const options = { heapSize: DEFAULT_HEAP_SIZE, mounts: [], name: null, script: "-", args: [] };
  let i = 0;
  const value = (flag) => {
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    i += 1;
    return argv[i];
  };
  for (; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--heap-size") {
      const heapSize = Number(value(arg));
      if (!Number.isInteger(heapSize) || heapSize < 16 * 1024) {
        throw new UsageError("--heap-size must be an integer of at least 16384");
      }
      options.heapSize = heapSize;
    } else if (arg === "--path") {
      options.mounts.push(parseMount(value(arg)));
    } else if (arg === "--name") {
      options.name = value(arg);
    } else if (arg === "-h" || arg === "--help") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg === "--") {
      i += 1;
      break;
    } else if (arg.startsWith("--")) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      break;
    }
  }
  if (i < argv.length) {
    options.script = argv[i];
    options.args = argv.slice(i + 1);
  }
  return options;
}

/**
 * Split SRC[:DEST] and resolve the default destination.
 * @param {string} spec
 * @returns {{src: string, dest: string}}
 */
function parseMount(spec) {
  const colon = spec.lastIndexOf(":");
  const src = colon > 0 ? spec.slice(0, colon) : spec;
  let dest = colon > 0 ? spec.slice(colon + 1) : `/lib/${path.basename(path.resolve(src))}`;
  if (!dest.startsWith("/")) dest = `/${dest}`;
  if (!fs.existsSync(src)) throw new UsageError(`--path ${src}: no such file or directory`);
  return { src, dest: path.posix.normalize(dest) };
}

/**
 * Copy a host file or directory tree into the Emscripten FS at dest.
 * @param {object} FS the Emscripten FS object of the VM
 * @param {string} src host path
 * @param {string} dest absolute VM path
 */
function copyIntoVm(FS, src, dest) {
  const stat = fs.statSync(src);
  if (stat.isDirectory()) {
    FS.mkdirTree(dest);
    for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
      if (entry.name.startsWith(".") || SKIPPED_NAMES.has(entry.name)) continue;
      const child = path.join(src, entry.name);
      if (entry.isDirectory() || entry.isFile() || entry.isSymbolicLink()) {
        copyIntoVm(FS, child, path.posix.join(dest, entry.name));
      }
    }
  } else if (stat.isFile()) {
    FS.mkdirTree(path.posix.dirname(dest));
    FS.writeFile(dest, fs.readFileSync(src));
  }
}

/** Collects single bytes from the VM and writes them to a file descriptor. */
class ByteSink {
  /** @param {number} fd */
  constructor(fd) {
    this.fd = fd;
    this.buffer = Buffer.alloc(4096);
    this.length = 0;
  }

  /** @param {Uint8Array} bytes */
  write(bytes) {
    for (const byte of bytes) {
      this.buffer[this.length] = byte;
      this.length += 1;
      // Flush at each newline so interleaving with the other stream stays
      // readable when both go to a terminal.
      if (byte === 10 || this.length === this.buffer.length) this.flush();
    }
  }

  flush() {
    let offset = 0;
    while (offset < this.length) {
      offset += fs.writeSync(this.fd, this.buffer, offset, this.length - offset);
    }
    this.length = 0;
  }
}

/**
 * Exit status for a SystemExit traceback, following CPython's rules.
 * @param {string} traceback
 * @param {ByteSink} stderr
 * @returns {number}
 */
function systemExitStatus(traceback, stderr) {
  const lines = traceback.trimEnd().split("\n");
  const match = /^SystemExit:?\s?(.*)$/.exec(lines[lines.length - 1] ?? "");
  const argument = match ? match[1] : "";
  if (argument === "" || argument === "None") return 0;
  if (/^-?\d+$/.test(argument)) return Number(argument) & 0xff;
  stderr.write(Buffer.from(`${argument}\n`));
  return 1;
}

// Installed before the program runs.  input() would spin forever waiting for
// a stdin the port cannot read from Node, so it raises EOFError as CPython
// does at end of input.
// It also sets sys.argv from __runner_argv, a JS array proxy.
const PRELUDE = `
import builtins, sys
def _no_input(prompt=None):
    raise EOFError("stdin is not available in the test VM")
builtins.input = _no_input
sys.argv[:] = [str(arg) for arg in __runner_argv]
`;

async function main() {
  const stdout = new ByteSink(1);
  const stderr = new ByteSink(2);
  let options;
  let source;
  try {
    options = parseArgs(process.argv.slice(2));
    source =
      options.script === "-" ? fs.readFileSync(0, "utf8") : fs.readFileSync(options.script, "utf8");
  } catch (error) {
    if (!(error instanceof UsageError) && error.code === undefined) throw error;
    process.stderr.write(`run.mjs: ${error.message}\n${USAGE}\n`);
    return 2;
  }
  const name = options.name ?? (options.script === "-" ? "<stdin>" : options.script);

  const mp = await loadMicroPython({
    heapsize: options.heapSize,
    linebuffer: false,
    stdout: (bytes) => stdout.write(bytes),
    stderr: (bytes) => stderr.write(bytes),
  });
  for (const { src, dest } of options.mounts) copyIntoVm(mp.FS, src, dest);

  let status = 0;
  try {
    // Compiled under its own name so its frames are not mistaken for the
    // program's when "<stdin>" is renamed below.
    mp.globals.set("__runner_prelude", PRELUDE);
    mp.globals.set("__runner_argv", [name, ...options.args]);
    mp.runPython(
      "exec(compile(__runner_prelude, '<runner>', 'exec'), {'__runner_argv': __runner_argv})\n" +
        "del __runner_prelude, __runner_argv",
    );
    mp.globals.set("__file__", name);
    await mp.runPythonAsync(source);
  } catch (error) {
    if (error?.name !== "PythonError") throw error;
    stdout.flush();
    if (error.type === "SystemExit") {
      status = systemExitStatus(error.message, stderr);
    } else {
      // The port names every program "<stdin>"; show the real name instead.
      stderr.write(Buffer.from(error.message.replaceAll('File "<stdin>"', `File "${name}"`)));
      status = 1;
    }
  }
  stdout.flush();
  stderr.flush();
  return status;
}

process.exit(await main());
