// A real tickwire server for the tests: `python -m tickwire serve` on a free port of
// 127.0.0.1, started by the test and stopped by its process id.

import { spawn } from "node:child_process";

const PYTHON = process.env.TICKWIRE_PYTHON ?? "python";

export async function startServer(...args) {
  const anyPort = args.includes("--port") ? [] : ["--port", "0"];
  const child = spawn(PYTHON, ["-m", "tickwire", "serve", ...anyPort, "--metrics-port", "off", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let said = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no server within 60 s: ${said}`)), 60_000);
    child.stdout.on("data", (chunk) => {
      said += chunk;
      const found = /serving on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(said);
      if (found) {
        clearTimeout(timer);
        resolve(Number(found[1]));
      }
    });
    child.on("exit", (code) => reject(new Error(`the server ended (${code}): ${said}`)));
  });
  return {
    url: `ws://127.0.0.1:${port}/`,
    port,
    /** Kill it at once (SIGKILL), as a crash would. */
    async kill() {
      const ended = new Promise((resolve) => child.on("exit", resolve));
      child.kill("SIGKILL");
      await ended;
    },
    async stop() {
      const ended = new Promise((resolve) => child.on("exit", resolve));
      child.kill("SIGTERM");
      await ended;
    },
  };
}
