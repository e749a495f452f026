// Parse and type-check Flux queries offline with InfluxData's own Flux front end (@influxdata/flux,
// the Rust parser and semantic analyser compiled to WebAssembly). Used by tests/test_dashboards.py.
//
//   node check.mjs <dir of @influxdata/flux>  < [{"id": "...", "query": "..."}, ...]
//   -> [{"id": "...", "errors": ["parse error", ...], "analysis": null | "error text", "ast": {...}}, ...]
//
// "errors" are the syntax errors the parser put into the AST (it never throws: it records them on
// the nodes and makes Bad* nodes). "analysis" is what semantic analysis (name resolution and type
// inference against the Flux standard library that the package embeds) says, or null when the
// query type-checks. The package exposes only parse() in JavaScript; analysis is reached through
// the module's C functions (flux_parse, flux_analyze, flux_error_str), in a fresh instance for
// each query so that one query's state never leaks into the next.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const wasmBytes = readFileSync(join(dir, 'flux_bg.wasm'));
const module = new WebAssembly.Module(wasmBytes);

// The package is built for bundlers (it imports the .wasm file as a module), which node cannot
// load without experimental flags: load its glue code with that one import replaced by a binding
// set after instantiation.
const IMPORT = "import * as wasm from './flux_bg.wasm';";
let glueSource = readFileSync(join(dir, 'flux.js'), 'utf8');
if (!glueSource.includes(IMPORT)) {
  throw new Error(`unexpected @influxdata/flux glue code: no "${IMPORT}" in flux.js`);
}
glueSource = glueSource.replace(IMPORT, 'let wasm; export function __bindWasm(exports) { wasm = exports; }');
const glue = await import('data:text/javascript;base64,' + Buffer.from(glueSource).toString('base64'));
const glueInstance = new WebAssembly.Instance(module, { './flux.js': glue });
glue.__bindWasm(glueInstance.exports);

function syntaxErrors(node, out) {
  if (Array.isArray(node)) {
    for (const item of node) syntaxErrors(item, out);
  } else if (node && typeof node === 'object') {
    const where = node.location ? `${node.location.start.line}:${node.location.start.column}` : '?';
    if (Array.isArray(node.errors)) {
      for (const e of node.errors) out.push(`${where}: ${e.msg}`);
    }
    if (typeof node.type === 'string' && node.type.startsWith('Bad')) {
      out.push(`${where}: ${node.type}: ${node.text || ''}`);
    }
    for (const [key, value] of Object.entries(node)) {
      if (key !== 'location') syntaxErrors(value, out);
    }
  }
  return out;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function analyze(query) {
  const unused = () => { throw new Error('JavaScript glue called from the C interface'); };
  const w = new WebAssembly.Instance(module, {
    './flux.js': { __wbindgen_object_drop_ref: unused, __wbindgen_json_parse: unused, __wbindgen_json_serialize: unused },
  }).exports;
  const cString = (text) => {
    const bytes = encoder.encode(text);
    const ptr = w.__wbindgen_malloc(bytes.length + 1);
    const memory = new Uint8Array(w.memory.buffer);
    memory.set(bytes, ptr);
    memory[ptr + bytes.length] = 0;
    return ptr;
  };
  const errorText = (handle) => {
    const ret = w.__wbindgen_malloc(8);  // CString returned by value: (pointer, length)
    w.flux_error_str(ret, handle);
    const view = new DataView(w.memory.buffer);
    const ptr = view.getUint32(ret, true);
    const len = view.getUint32(ret + 4, true);
    return decoder.decode(new Uint8Array(w.memory.buffer, ptr, len)).replace(/\0$/, '');
  };
  const pkg = w.flux_parse(cString('query.flux'), cString(query));
  // flux_analyze stores an Option<Box<Package>> there, dropping what it held first: start with None.
  const out = w.__wbindgen_malloc(4);
  new DataView(w.memory.buffer).setUint32(out, 0, true);
  const error = w.flux_analyze(pkg, out);
  return error ? errorText(error) : null;
}

const input = JSON.parse(readFileSync(0, 'utf8'));
const results = input.map(({ id, query }) => {
  const ast = glue.parse(query);
  const errors = syntaxErrors(ast, []);
  return { id, errors, analysis: errors.length ? null : analyze(query), ast };
});
process.stdout.write(JSON.stringify(results));
