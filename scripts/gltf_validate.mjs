// Validate a .glb or .gltf with the Khronos glTF validator and print its report as one JSON line.
//
//   node scripts/gltf_validate.mjs FILE
//
// Prints {validatorVersion, uri, numErrors, numWarnings, numInfos, numHints, messages: [{code,
// severity, message, pointer}]} (severity 0 error, 1 warning, 2 info, 3 hint) and exits 0 whatever
// the file's issues; exits 1 with one line on stderr when the file cannot be read or is not glTF at
// all, and 3 when the validator package is missing.
//
// The package (npm `gltf-validator`, pinned in .ci/run) is looked for in MAGIC3D_GLTF_VALIDATOR
// (the package's folder) when set, else in .ci/node/node_modules/gltf-validator of this repository,
// else wherever Node's own resolution finds it.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

function loadValidator() {
  const candidates = [
    process.env.MAGIC3D_GLTF_VALIDATOR,
    path.join(here, "..", ".ci", "node", "node_modules", "gltf-validator"),
    "gltf-validator",
  ].filter(Boolean);
  for (const where of candidates) {
    try {
      return require(where.startsWith(".") || path.isAbsolute(where) ? path.resolve(where) : where);
    } catch (error) {
      if (error.code !== "MODULE_NOT_FOUND") throw error;
    }
  }
  console.error(`gltf-validator not found (looked in ${candidates.join(", ")}); ` +
    "install it with: npm install --prefix .ci/node gltf-validator");
  process.exit(3);
}

const file = process.argv[2];
if (!file || process.argv.length > 3) {
  console.error("usage: node scripts/gltf_validate.mjs FILE.glb|FILE.gltf");
  process.exit(1);
}
const validator = loadValidator();
let data;
try {
  data = new Uint8Array(fs.readFileSync(file));
} catch (error) {
  console.error(`cannot read ${file}: ${error.message}`);
  process.exit(1);
}
const folder = path.dirname(path.resolve(file));
const options = {
  uri: path.basename(file),
  maxIssues: 0, // every issue
  writeTimestamp: false,
  externalResourceFunction: (uri) => fs.promises.readFile(path.resolve(folder, decodeURIComponent(uri)))
    .then((bytes) => new Uint8Array(bytes)),
};
try {
  const report = await validator.validateBytes(data, options);
  const issues = report.issues;
  console.log(JSON.stringify({
    validatorVersion: report.validatorVersion,
    uri: report.uri,
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    numHints: issues.numHints,
    messages: issues.messages.map(({ code, severity, message, pointer }) => ({ code, severity, message, pointer })),
  }));
} catch (error) {
  console.error(`not a glTF asset: ${String(error).split("\n")[0]}`);
  process.exit(1);
}
