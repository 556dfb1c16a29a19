// The declarations name exactly what the module gives (a cheap guard without tsc).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as mod from '../src/tokend-client.js';

const dts = readFileSync(new URL('../src/tokend-client.d.ts', import.meta.url), 'utf8');

test('tokend-client.d.ts declares the module exports and every client member', () => {
  const exported = [...dts.matchAll(/^export (?:class|function) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(exported, Object.keys(mod).sort());
  const body = dts.slice(dts.indexOf('export interface TokendClient {'));
  const block = body.slice(0, body.indexOf('\n}'));
  const declared = [...block.matchAll(/^  (?:readonly )?(\w+)[(:]/gm)].map((m) => m[1]).sort();
  const client = mod.createTokendClient({ storage: null, locks: null, BroadcastChannel: null, fetch: async () => new Response() });
  assert.deepEqual(declared, Object.keys(client).sort());
});
