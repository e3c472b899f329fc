// The type tests (tests/js/types/uses.ts) under node's own module resolution: `make test`
// runs `tsc -p tests/js/types` (moduleResolution bundler); this runs the nodenext config,
// so that jetsock.d.ts also works for a node ESM project. Needs `cd clients/js && npm ci`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const TSC = fileURLToPath(new URL("../../clients/js/node_modules/typescript/bin/tsc", import.meta.url));
const CONFIG = fileURLToPath(new URL("./types/tsconfig.nodenext.json", import.meta.url));

test("uses.ts type-checks under module and moduleResolution nodenext", () => {
  try {
    execFileSync(process.execPath, [TSC, "-p", CONFIG], { encoding: "utf8", stdio: "pipe" });
  } catch (err) {
    assert.fail(`tsc -p ${CONFIG} failed:\n${err.stdout ?? ""}${err.stderr ?? err.message}`);
  }
});
