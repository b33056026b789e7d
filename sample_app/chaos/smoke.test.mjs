// The sample app's chaos smoke for Node's test runner (a second JUnit dialect):
// CHAOS_BASE_URL=http://… node --test --test-reporter=junit sample_app/chaos/smoke.test.mjs
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

const base = process.env.CHAOS_BASE_URL;

test('the app answers on /', { skip: !base && 'CHAOS_BASE_URL is not set' }, async () => {
  assert.equal((await fetch(`${base}/`)).status, 200);
});

describe('under repeated visits', { skip: !base && 'CHAOS_BASE_URL is not set' }, () => {
  for (let i = 0; i < 10; i++) {
    test(`visit ${i} answers 200`, async () => {
      assert.equal((await fetch(`${base}/`)).status, 200);
    });
  }
  describe('probes', () => {
    test('liveliness is ok', async () => {
      assert.deepEqual(await (await fetch(`${base}/health/liveliness`)).json(), { status: 'ok' });
    });
    test('TLS is required', { skip: 'the app is served over plain HTTP here' }, () => {});
  });
});
