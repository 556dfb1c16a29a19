// The copy tokend serves must be the source byte for byte (run `npm run build` after edits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

test('service/static/tokend-client.js is a byte-identical copy of src/tokend-client.js', () => {
  const source = readFileSync(new URL('../src/tokend-client.js', import.meta.url));
  const served = readFileSync(new URL('../../../service/static/tokend-client.js', import.meta.url));
  assert.ok(source.equals(served), 'stale build: run `node clients/js/build.mjs`');
});
