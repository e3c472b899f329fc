// The browser client's size budget: clients/js/jetsock.js bundled and minified by esbuild
// (ESM, as an app's bundler would ship it), gzipped at level 9, must stay under 6 kB.
// Needs the dev dependencies: `cd clients/js && npm ci` (make test runs it).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const JS_DIR = fileURLToPath(new URL("../../clients/js/", import.meta.url));
const LIMIT = 6144;

test(`jetsock.js minified and gzipped is under ${LIMIT} bytes`, async (t) => {
  const esbuild = createRequire(JS_DIR)("esbuild"); // from clients/js/node_modules
  const result = await esbuild.build({
    entryPoints: [JS_DIR + "jetsock.js"],
    bundle: true,
    minify: true,
    format: "esm",
    write: false,
    logLevel: "silent",
  });
  const code = result.outputFiles[0].contents;
  const gzipped = gzipSync(code, { level: 9 }).byteLength;
  t.diagnostic(`jetsock.js: ${code.byteLength} bytes minified, ${gzipped} bytes gzipped (limit ${LIMIT})`);
  assert.ok(gzipped < LIMIT, `${gzipped} bytes gzipped, over the ${LIMIT} budget`);
});
