// The browser client's size budget: clients/js/jetsock.js bundled and minified by esbuild
// (ESM with code splitting, as an app's bundler would ship it), gzipped at level 9: the main
// chunk's budget is 6,000 bytes, and it must stay under that. The HTTP stream transport
// (jetsock-stream.js) is a chunk of its own, loaded by a dynamic import() only when a client
// falls back to it; it has a budget too.
// Needs the dev dependencies: `cd clients/js && npm ci` (make test runs it).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const JS_DIR = fileURLToPath(new URL("../../clients/js/", import.meta.url));
const LIMIT = 6000;
const STREAM_LIMIT = 3072;

test(`jetsock.js minified and gzipped is under ${LIMIT} bytes, its stream chunk under ${STREAM_LIMIT}`, async (t) => {
  const esbuild = createRequire(JS_DIR)("esbuild"); // from clients/js/node_modules
  const result = await esbuild.build({
    entryPoints: [JS_DIR + "jetsock.js"],
    bundle: true,
    minify: true,
    format: "esm",
    splitting: true,
    outdir: "out",
    write: false,
    logLevel: "silent",
  });
  const chunks = Object.fromEntries(result.outputFiles.map((file) => [basename(file.path), file.contents]));
  // Two chunks: the main module and the stream transport (which shares no code with it).
  const names = Object.keys(chunks).sort();
  assert.equal(names.length, 2, `chunks: ${names}`);
  const stream = names.find((name) => name.startsWith("jetsock-stream"));
  assert.ok(stream && chunks["jetsock.js"], `chunks: ${names}`);
  assert.match(new TextDecoder().decode(chunks["jetsock.js"]), new RegExp(`import\\("\\./${stream.replace(".", "\\.")}"\\)`));
  for (const [name, limit] of [["jetsock.js", LIMIT], [stream, STREAM_LIMIT]]) {
    const code = chunks[name];
    const gzipped = gzipSync(code, { level: 9 }).byteLength;
    t.diagnostic(`${name}: ${code.byteLength} bytes minified, ${gzipped} bytes gzipped (limit ${limit})`);
    assert.ok(gzipped < limit, `${name}: ${gzipped} bytes gzipped, over the ${limit} budget`);
  }
});
